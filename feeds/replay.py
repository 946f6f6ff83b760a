"""Recordings of feed messages: JSON lines, one neutral feed message per line (its ``ts``
is the feed's own timestamp). ``oddstream feed record`` writes them from Kafka;
``oddstream feed replay`` and ``oddstream dev --feed jsonl:PATH`` play them back.

A line that is not a valid feed message is counted and reported with its line number,
then skipped: a recording with a bad line still replays the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

from feeds.model import FeedMessage, decode_feed, encode_feed

log = logging.getLogger(__name__)


@dataclass
class ReadReport:
    """What a reader skipped, by line number, with the reason; ``raw`` keeps the skipped
    record's bytes where the reader has them, for a dead-letter topic."""

    read: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def skip(self, line_no: int, reason: str, raw: bytes = b"") -> None:
        self.skipped.append((line_no, reason))
        self.raw.append(raw)
        log.warning("line %d skipped: %s", line_no, reason)


class Translation(NamedTuple):
    """What a feed adapter made of one record of its source: feed messages in order, and
    the parts of the record that were skipped, each with a reason."""

    messages: list[FeedMessage]
    problems: list[str]


def reported(
    report: ReadReport, position: int, translation: Translation, prefix: str = ""
) -> list[FeedMessage]:
    """Count a translated record as read and report its problems at ``position`` (each
    after ``prefix``); returns its messages."""
    report.read += 1
    for problem in translation.problems:
        report.skip(position, prefix + problem)
    return translation.messages


def read_jsonl(path: Path, report: ReadReport | None = None) -> Iterator[FeedMessage]:
    """Feed messages of a JSON-lines recording, in file order."""
    report = report if report is not None else ReadReport()
    with path.open("rb") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                message = decode_feed(line)
            except msgspec.DecodeError as exc:
                report.skip(line_no, str(exc), line.rstrip(b"\n"))
                continue
            report.read += 1
            yield message


def write_jsonl(path: Path, messages: Iterable[FeedMessage]) -> int:
    count = 0
    with path.open("wb") as out:
        for message in messages:
            out.write(encode_feed(message) + b"\n")
            count += 1
    return count


async def paced(
    messages: Iterable[FeedMessage], speed: float, *, start: float | None = None
) -> AsyncIterator[FeedMessage]:
    """Yield messages at ``speed`` times their recorded pace (by ``ts``); ``speed`` 0
    yields them as fast as the consumer takes them. Messages keep their own ``ts``.

    Time is measured on the monotonic clock from ``start`` (default: the first message).
    """
    first_ts: int | None = None
    origin = start
    for message in messages:
        if speed > 0:
            if first_ts is None:
                first_ts = message.ts
                origin = time.monotonic() if origin is None else origin
            assert origin is not None
            due = origin + (message.ts - first_ts) / 1000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # Pacing by design, not synchronisation.
        yield message
