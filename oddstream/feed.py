"""``oddstream feed synth|replay|record``: produce a feed to Kafka, or record one from it."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from feeds.kafka_feed import KafkaFeedProducer, record
from feeds.model import FeedMessage
from feeds.replay import ReadReport, write_jsonl
from feeds.sources import SourceError, open_source
from oddstream import topics
from oddstream.ops import operator_listener
from oddstream.options import FeedSettings
from oddstream.process import Failed
from oddstream.tracing import traced

#: Messages between two progress lines.
PROGRESS_EVERY = 1000


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
    if args.feed_command == "synth":
        source: AsyncIterator[FeedMessage] = open_source(
            "synth", seed=settings.seed, events=settings.events, rate=settings.rate, speed=0
        )
    else:
        source = open_source(
            f"{args.format}:{args.path}",
            seed=settings.seed,
            events=settings.events,
            rate=settings.rate,
            speed=settings.speed,
            report=report,
        )
    with traced("feed", settings.traces, settings.trace_sample):
        await _produce(settings, args, source, report)


async def _produce(
    settings: FeedSettings,
    args: argparse.Namespace,
    source: AsyncIterator[FeedMessage],
    report: ReadReport,
) -> None:
    names = topics.names(settings)
    sent = dead = 0
    started = time.monotonic()
    producing = asyncio.Event()
    ops = operator_listener("feed", settings.ops_host, settings.ops_port, producing.is_set)
    async with ops, KafkaFeedProducer(settings.kafka, topics=names) as producer:
        producing.set()
        async for message in source:
            await producer.send(message)
            sent += 1
            dead = await _dead_letter_skipped(producer, report, dead, args)
            if sent % PROGRESS_EVERY == 0:
                rate = sent / (time.monotonic() - started)
                end = "\r" if sys.stderr.isatty() else "\n"  # A live line on a terminal.
                print(f"oddstream: {sent} messages ({rate:,.0f}/s)", end=end, file=sys.stderr)
            if args.limit is not None and sent >= args.limit:
                break
        dead = await _dead_letter_skipped(producer, report, dead, args)
        await producer.flush()
    print(
        f"oddstream: produced {sent} feed messages; {dead} unreadable records to "
        f"{names.deadletter}",
        file=sys.stderr,
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
    return len(report.skipped)
