"""Owner beats (channels/liveness.py): the silence bookkeeping processors and gateways act
on, and the beat's codec, without Redis or Kafka."""

from __future__ import annotations

import pytest

from channels.liveness import MAX_BEAT_BYTES, OwnerBeat, Silence, decode_beat, encode_beat


def test_a_key_is_reported_once_per_silence_and_comes_back_when_heard() -> None:
    silence: Silence[int] = Silence(1.0)
    assert silence.heard([0, 1], now=10.0) == []
    assert silence.due(10.9) == []
    silence.heard([1], now=10.5)
    assert silence.due(11.1) == [0]
    assert silence.due(11.2) == [], "reported once"
    assert silence.silent == {0}
    assert silence.due(11.6) == [1]
    assert silence.heard([0], now=12.0) == [0], "back"
    assert silence.silent == {1}


def test_a_key_never_heard_is_never_judged() -> None:
    silence: Silence[str] = Silence(0.5)
    assert silence.due(100.0) == []


def test_a_restart_counts_every_key_as_heard_now_but_keeps_the_silent_ones() -> None:
    silence: Silence[int] = Silence(1.0)
    silence.heard([0, 1], now=0.0)
    assert silence.due(1.5) == [0, 1]
    silence.heard([1], now=1.6)
    silence.restart(5.0)
    assert silence.due(5.5) == []
    assert silence.silent == {0}, "stays silent until heard"
    assert silence.heard([0], now=5.6) == [0]


def test_retry_reports_a_key_again_and_forget_stops_judging_it() -> None:
    silence: Silence[str] = Silence(1.0)
    silence.heard(["a", "b"], now=0.0)
    assert sorted(silence.due(2.0)) == ["a", "b"]
    silence.retry("a")
    silence.forget("b")
    assert silence.due(2.1) == ["a"]
    assert silence.heard(["b"], now=2.2) == []


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Silence(0)


def test_a_beat_round_trips_and_anything_else_is_refused() -> None:
    beat = OwnerBeat("oddstream-books", "m-1", (0, 2), 1_700_000_000_000)
    assert decode_beat(encode_beat(beat)) == beat
    assert decode_beat(b'{"type":"delta"}') is None
    assert decode_beat(b"\xff") is None
    padded = encode_beat(OwnerBeat("g", "m" * MAX_BEAT_BYTES, (), 0))
    assert decode_beat(padded) is None, "bounded before decoding"
