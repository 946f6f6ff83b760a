"""The ``deltas`` topic check, without services: a real processor's stream passes, and
every way a topic can break (a hole, a repeat, a reused seq, a foreign epoch, a market
without its snapshot) is counted."""

from __future__ import annotations

import itertools

import msgspec
import pytest

import protocol
from feeds.embedded import epoch_minter
from feeds.model import encode_feed
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay
from protocol import Delta
from tests.faults.topic import TopicVerdict, check_topic


def produced() -> list[bytes]:
    """What a processor produces to ``deltas`` for a short feed."""
    messages = itertools.islice(MatchDay(seed=3, events=2, start_ms=0), 400)
    processor = Processor(epoch_minter(lambda: 0))
    step = processor.process(
        [FeedRecord("f", 0, i, encode_feed(m)) for i, m in enumerate(messages)]
    )
    return [payload for _, payload in step.deltas]


def deltas_at(topic: list[bytes]) -> list[int]:
    """Indexes of the deltas that follow another message of their market."""
    return [
        i
        for i, raw in enumerate(topic)
        if isinstance(m := protocol.decode_server(raw), Delta) and m.seq > 2
    ]


def counts(v: TopicVerdict) -> tuple[int, int, int, int]:
    return v.gaps, v.duplicates, v.reused, v.foreign


def test_a_processors_stream_passes() -> None:
    topic = produced()
    verdict = check_topic(topic)
    assert counts(verdict) == (0, 0, 0, 0)
    assert verdict.messages == len(topic)
    assert verdict.markets > 1
    assert not verdict.failures()


def test_a_missing_delta_is_a_gap() -> None:
    topic = produced()
    del topic[deltas_at(topic)[0]]
    assert counts(check_topic(topic)) == (1, 0, 0, 0)


def test_a_repeated_message_is_a_duplicate() -> None:
    topic = produced()
    i = deltas_at(topic)[0]
    # Re-encoded with another field order: still the same message.
    again = msgspec.json.encode(dict(reversed(msgspec.json.decode(topic[i]).items())))
    topic.insert(i + 1, again)
    verdict = check_topic(topic)
    assert counts(verdict) == (0, 1, 0, 0)
    assert verdict.failures() == ["1 duplicate seqs on the deltas topic"]


def test_another_message_at_a_seen_seq_is_reused() -> None:
    topic = produced()
    i = deltas_at(topic)[0]
    delta = protocol.decode_server(topic[i])
    assert isinstance(delta, Delta)
    other = msgspec.structs.replace(delta, status="suspended", reason="feed_stale")
    topic.append(protocol.encode(other))
    assert counts(check_topic(topic)) == (0, 0, 1, 0)


def test_a_delta_of_another_epoch_is_foreign_and_a_new_epoch_restarts() -> None:
    topic = produced()
    i = deltas_at(topic)[0]
    delta = protocol.decode_server(topic[i])
    assert isinstance(delta, Delta)
    foreign = msgspec.structs.replace(delta, epoch="other", seq=delta.seq + 100)
    topic.append(protocol.encode(foreign))
    assert counts(check_topic(topic)) == (0, 0, 0, 1)


@pytest.mark.parametrize("at", [0, 1])
def test_a_market_without_its_snapshot_is_a_gap(at: int) -> None:
    topic = produced()
    first = protocol.decode_server(topic[at])
    market = getattr(first, "market_id", None)
    assert market is not None
    kept = [r for r in topic if r != topic[at]]
    verdict = check_topic(kept)
    assert verdict.gaps == 1
    assert verdict.details[0].startswith(f"{market}: first message is a delta")
