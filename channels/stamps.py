"""Stage stamps: the timings (and trace context) a delta carries from the feed to the
gateway, never to clients. The formats and their failure cases are the contract of
``docs/observability.md`` ("Stage stamps"); this module only reads and writes them.

* Feed -> books: the Kafka record header :data:`STAMP_HEADER`, ASCII ``"<t0> <t1>"``
  (wall-clock microseconds; ``-`` for an unknown ``t0``), and the W3C ``traceparent``.
* Books -> gateway: an optional header line before the JSON of each pub/sub payload,
  ``~1 f=<t0> p=<t3> t=<traceparent>\\n``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "STAMP_HEADER",
    "TRACE_HEADER",
    "Stamps",
    "envelope",
    "feed_stamp",
    "now_us",
    "read_envelope",
    "read_feed_stamp",
    "wrap",
]

STAMP_HEADER = "oddstream-stamp"
TRACE_HEADER = "traceparent"

#: First byte of an envelope's header line (a JSON payload starts with ``{``).
MARK = b"~"[0]


def now_us() -> int:
    """Wall-clock microseconds: the unit of every stamp."""
    return time.time_ns() // 1000


def feed_stamp(ts_ms: int | None, sent_us: int) -> bytes:
    """The :data:`STAMP_HEADER` value of a record: the feed's ``ts`` (ms) and the send."""
    if ts_ms is None:
        return b"- %d" % sent_us
    return b"%d %d" % (ts_ms * 1000, sent_us)


def read_feed_stamp(value: bytes) -> tuple[int | None, int] | None:
    """``(t0, t1)`` of a :data:`STAMP_HEADER` value (``t0`` None when unknown); None when
    it does not parse."""
    feed, _, sent = value.partition(b" ")
    try:
        return (None if feed == b"-" else int(feed)), int(sent)
    except ValueError:
        return None


class Stamps(NamedTuple):
    """What a pub/sub envelope carries: ``t0`` (None when unknown), ``t3``, and the
    ``traceparent`` of the books step span (None when not sampled)."""

    feed_us: int | None
    publish_us: int
    trace: str | None = None


def envelope(feed_us: int | bytes | None, publish_us: int, trace: str | None = None) -> bytes:
    r"""The header line (with its ``\n``) put before a payload. ``feed_us`` may be given
    as the decimal digits of a Kafka stamp header (checked by the caller: digits only)."""
    head = b"~1"
    if isinstance(feed_us, bytes):
        head += b" f=" + feed_us
    elif feed_us is not None:
        head += b" f=%d" % feed_us
    head += b" p=%d" % publish_us
    if trace:
        head += b" t=" + trace.encode()
    return head + b"\n"


def read_envelope(head: bytes) -> Stamps | None:
    """The stamps of a header line (without its ``\\n``): None for another version of the
    envelope. Raises :class:`ValueError` when it does not parse (no ``p``, a bad number)."""
    version, *fields = head[1:].split(b" ")
    if version != b"1":
        return None
    feed: int | None = None
    publish: int | None = None
    trace: str | None = None
    for field in fields:
        key, _, value = field.partition(b"=")
        if key == b"f":
            feed = int(value)
        elif key == b"p":
            publish = int(value)
        elif key == b"t":
            trace = value.decode("ascii")
    if publish is None:
        raise ValueError("an envelope without its publish time")
    return Stamps(feed, publish, trace)


def wrap(
    publications: Sequence[tuple[tuple[str, ...], bytes]], head: bytes
) -> list[tuple[tuple[str, ...], bytes]]:
    """``publications`` with ``head`` (an :func:`envelope`) before each payload."""
    return [(channels, head + payload) for channels, payload in publications]
