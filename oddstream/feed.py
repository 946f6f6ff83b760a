"""``oddstream feed synth|replay|record``: produce a feed to Kafka, or record one from it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from channels.metrics import counter, gauge
from feeds.kafka_feed import KafkaFeedProducer, record
from feeds.model import FEED_TOPICS, FeedMessage, topic_of
from feeds.replay import ReadReport, write_jsonl
from feeds.sources import DIRECTORY_FORMATS, SourceError, open_source
from oddstream import topics
from oddstream.ops import operator_listener
from oddstream.options import FeedSettings
from oddstream.process import Failed
from oddstream.tracing import traced

log = logging.getLogger("oddstream")

#: Messages between two progress lines.
PROGRESS_EVERY = 1000

# docs/observability.md, "Feed". Label children bound once.
_PRODUCED = counter(
    "oddstream_feed_produced_total", "records queued to Kafka (the logical topic)", ["topic"]
)
PRODUCED = {t: _PRODUCED.labels(topic=t) for t in (*FEED_TOPICS, "deadletter")}
REPLAY_PROGRESS = gauge(
    "oddstream_feed_replay_progress_ratio", "share of a replay's input read (0: synthetic)"
)
LAST_PRODUCED = gauge(
    "oddstream_feed_last_produced_timestamp_seconds",
    "send time of the last record queued (the process's start before the first)",
)


async def main(settings: FeedSettings, args: argparse.Namespace) -> None:
    try:
        await _main(settings, args)
    except SourceError as exc:
        raise Failed(2, f"--feed: {exc}") from None


async def _main(settings: FeedSettings, args: argparse.Namespace) -> None:
    names = topics.names(settings)
    if args.feed_command == "record":
        messages = await record(settings.kafka, topics=names, limit=args.limit, idle_s=args.idle_s)
        count = write_jsonl(Path(args.path), messages)
        print(f"oddstream: recorded {count} feed messages to {args.path}", flush=True)
        return
    await topics.ensure(settings)
    report = ReadReport()
    records = 0
    if args.feed_command == "synth":
        source: AsyncIterator[FeedMessage] = open_source(
            "synth", seed=settings.seed, events=settings.events, rate=settings.rate, speed=0
        )
    else:
        records = await asyncio.to_thread(_records_in, Path(args.path), args.format)
        source = open_source(
            f"{args.format}:{args.path}",
            seed=settings.seed,
            events=settings.events,
            rate=settings.rate,
            speed=settings.speed,
            report=report,
        )
    with traced("feed", settings.traces, settings.trace_sample):
        await _produce(settings, args, source, report, records)


async def _produce(
    settings: FeedSettings,
    args: argparse.Namespace,
    source: AsyncIterator[FeedMessage],
    report: ReadReport,
    records: int,
) -> None:
    """Send ``source`` to Kafka; ``records``: how many the recording holds (its progress),
    0 for a synthetic feed."""
    names = topics.names(settings)
    sent = dead = 0
    started = time.monotonic()
    LAST_PRODUCED.set_to_current_time()  # Silent from the start until the first record.
    producing = asyncio.Event()
    ops = operator_listener("feed", settings.ops_host, settings.ops_port, producing.is_set)
    async with ops, KafkaFeedProducer(settings.kafka, topics=names) as producer:
        producing.set()
        async for message in source:
            await producer.send(message)
            PRODUCED[topic_of(message)].inc()
            LAST_PRODUCED.set_to_current_time()
            sent += 1
            if records:
                REPLAY_PROGRESS.set(min(report.read / records, 1.0))
            dead = await _dead_letter_skipped(producer, report, dead, args)
            if sent % PROGRESS_EVERY == 0:
                log.info("sent %d messages (%.0f/s)", sent, sent / (time.monotonic() - started))
            if args.limit is not None and sent >= args.limit:
                break
        else:
            if records:
                REPLAY_PROGRESS.set(1.0)  # Read to its end.
        dead = await _dead_letter_skipped(producer, report, dead, args)
        await producer.flush()
    # The command's outcome, on stdout as `record`'s (launchers wait for it at any level).
    print(
        f"oddstream: produced {sent} feed messages; {dead} unreadable records to "
        f"{names.deadletter}",
        flush=True,
    )


async def _dead_letter_skipped(
    producer: KafkaFeedProducer, report: ReadReport, done: int, args: argparse.Namespace
) -> int:
    """Send records the reader skipped since ``done`` to the dead-letter topic, with the
    reason and where they were in the recording; returns the new count."""
    for (line_no, reason), raw in zip(report.skipped[done:], report.raw[done:], strict=True):
        headers = [
            ("reason", reason.encode()),
            ("source", str(args.path).encode()),
            ("line", str(line_no).encode()),
        ]
        await producer.dead_letter(raw, headers)
        PRODUCED["deadletter"].inc()
    return len(report.skipped)


def _records_in(path: Path, fmt: str) -> int:
    """Records in a recording, for the replay's progress: its files (a directory of a
    format of one message per file), else its non-empty lines (one read of the file)."""
    if fmt in DIRECTORY_FORMATS:
        if not path.is_dir():
            return 1
        return sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())
