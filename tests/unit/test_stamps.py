"""The stamp formats of ``docs/observability.md``: Kafka's stamp header and the pub/sub
envelope's header line, both ways, and what a broken one does."""

from __future__ import annotations

import pytest

from channels.stamps import Stamps, envelope, feed_stamp, read_envelope, read_feed_stamp

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("ts_ms", "sent_us", "header"),
    [
        (1_700_000_000_123, 1_700_000_000_124_567, b"1700000000123000 1700000000124567"),
        (None, 42, b"- 42"),
    ],
)
def test_feed_stamp_header(ts_ms: int | None, sent_us: int, header: bytes) -> None:
    assert feed_stamp(ts_ms, sent_us) == header
    assert read_feed_stamp(header) == (None if ts_ms is None else ts_ms * 1000, sent_us)


@pytest.mark.parametrize("value", [b"", b"12", b"x 12", b"12 y"])
def test_an_unreadable_feed_stamp_is_none(value: bytes) -> None:
    assert read_feed_stamp(value) is None


@pytest.mark.parametrize(
    ("stamps", "line"),
    [
        (Stamps(10, 20), b"~1 f=10 p=20\n"),
        (Stamps(None, 20), b"~1 p=20\n"),
        (Stamps(10, 20, TRACE), b"~1 f=10 p=20 t=" + TRACE.encode() + b"\n"),
    ],
)
def test_envelope_round_trip(stamps: Stamps, line: bytes) -> None:
    assert envelope(*stamps) == line
    assert read_envelope(line[:-1]) == stamps


def test_unknown_fields_are_ignored_and_other_versions_carry_nothing() -> None:
    assert read_envelope(b"~1 p=5 zz=whatever f=3") == Stamps(3, 5)
    assert read_envelope(b"~2 p=5") is None


@pytest.mark.parametrize("head", [b"~1", b"~1 f=3", b"~1 p=soon", b"~1 f=x p=3"])
def test_a_broken_envelope_raises(head: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - int() says which.
        read_envelope(head)
