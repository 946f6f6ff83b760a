"""The ``oddstream`` command: ``dev`` (everything in one process), ``feed``, ``books`` and
``gateway`` (the distributed mode).

A bad flag or setting stops start-up with a message naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from channels.broker import BrokerError, MemoryBroker
from channels.store import MemoryStore, StoreError
from feeds.books_runner import BooksConfig, BooksRunner
from feeds.embedded import EmbeddedPipeline
from feeds.kafka_feed import (
    KafkaFeedProducer,
    TopicLayoutError,
    TopicNames,
    ensure_topics,
    partition_counts,
    record,
)
from feeds.model import FeedMessage
from feeds.replay import ReadReport, write_jsonl
from feeds.sources import SourceError, open_source
from server.app import build_app
from server.gateway import Gateway
from server.serve import serve
from server.settings import Settings, SettingsError
from server.webui import ensure_built

log = logging.getLogger("oddstream")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oddstream", description="Real-time push server for live sports-betting odds."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="everything in one process: synthetic feed, books, gateway")
    _server_flags(dev)
    dev.add_argument("--seed", type=int, help="synthetic feed seed (default 1)")
    dev.add_argument("--events", type=int, help="concurrent events (default 12)")
    dev.add_argument("--rate", type=float, help="feed messages per second (default 200)")
    dev.add_argument("--feed", help="synth (default) or FORMAT:PATH, a recording to replay")
    dev.add_argument("--speed", type=float, help="replay speed (x real time; 0 = max)")
    dev.add_argument("--stale-after-s", type=float, dest="stale_after_s", help=_STALE)
    dev.add_argument(
        "--web", help="auto (default): build and serve the web shell at /; off: plain demo page"
    )
    gateway = sub.add_parser("gateway", help="a gateway: Redis in; WebSocket, SSE and REST out")
    _server_flags(gateway)
    _redis_flag(gateway)

    books = sub.add_parser("books", help="a book processor: Kafka in; Redis and Kafka out")
    _kafka_flag(books)
    _redis_flag(books)
    books.add_argument("--group", help="consumer group (default oddstream-books)")
    books.add_argument("--partitions", type=int, help="feed topic partitions if created")
    books.add_argument("--history-size", type=int, dest="history_size")
    books.add_argument("--stale-after-s", type=float, dest="stale_after_s", help=_STALE)
    books.add_argument("--log-level", dest="log_level")

    feed = sub.add_parser("feed", help="produce a feed to Kafka, or record one from it")
    feed_sub = feed.add_subparsers(dest="feed_command", required=True)
    synth = feed_sub.add_parser("synth", help="the synthetic match day, paced at --rate")
    replay = feed_sub.add_parser("replay", help="replay a recording at --speed x its pace")
    replay.add_argument("path", help="the recording")
    replay.add_argument(
        "--format", default="jsonl", help="jsonl (default), or another reader (betfair, uof)"
    )
    replay.add_argument("--speed", type=float, help="x real time; 0 = as fast as possible")
    record = feed_sub.add_parser("record", help="write the feed topics to a JSON-lines file")
    record.add_argument("path", help="the file to write")
    record.add_argument("--idle-s", type=float, default=2.0, help="stop after this long idle")
    for p in (synth, replay, record):
        _kafka_flag(p)
        p.add_argument("--limit", type=int, help="stop after this many messages")
        p.add_argument("--log-level", dest="log_level")
    for p in (synth, replay):
        p.add_argument("--partitions", type=int, help="feed topic partitions if created")
    synth.add_argument("--seed", type=int)
    synth.add_argument("--events", type=int)
    synth.add_argument("--rate", type=float, help="messages per second (default 200)")
    return parser


def _redis_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0")


def _kafka_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", help="Kafka bootstrap servers host:port[,host:port]")
    p.add_argument("--topic-prefix", dest="topic_prefix", help="prefix of every topic name")


_STALE = "suspend an event's open markets after its feed is silent this long (0: never)"


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000; 0 picks a free one)")
    p.add_argument("--heartbeat-s", type=float, dest="heartbeat_s", help="heartbeat interval")
    p.add_argument("--max-subscriptions", type=int, dest="max_subscriptions")
    p.add_argument("--queue-frames", type=int, dest="queue_frames")
    p.add_argument("--conflate-after-frames", type=int, dest="conflate_after_frames")
    p.add_argument("--send-timeout-s", type=float, dest="send_timeout_s")
    p.add_argument("--max-frame-bytes", type=int, dest="max_frame_bytes")
    p.add_argument(
        "--coalesce-ms",
        type=float,
        dest="coalesce_ms",
        help="WebSocket write coalescing window (default 0: once per event-loop turn)",
    )
    p.add_argument("--history-size", type=int, dest="history_size")
    p.add_argument("--drain-s", type=float, dest="drain_s", help="drain deadline on SIGTERM")
    p.add_argument("--log-level", dest="log_level")
    _security_flags(p)


def _security_flags(p: argparse.ArgumentParser) -> None:
    """Session-level security: rate limits and authentication (docs/auth.md)."""
    p.add_argument("--command-rate", type=float, dest="command_rate", help="commands/s")
    p.add_argument("--command-burst", type=int, dest="command_burst")
    p.add_argument("--rate-limit-close-after", type=int, dest="rate_limit_close_after")
    p.add_argument("--max-resume-markets", type=int, dest="max_resume_markets")
    p.add_argument("--auth", choices=("none", "jwt"), help="none (dev default) or jwt (gateway)")
    p.add_argument("--anonymous", help="channel patterns anonymous clients may follow")
    p.add_argument("--jwt-key", dest="jwt_key", help="HS256 secret or PEM public key file")
    p.add_argument("--jwks-url", dest="jwks_url", help="JWKS URL of the issuer's keys")
    p.add_argument("--jwt-audience", dest="jwt_audience")
    p.add_argument("--jwt-issuer", dest="jwt_issuer")
    p.add_argument("--jwks-refetch-s", type=float, dest="jwks_refetch_s")
    p.add_argument("--ticket-ttl-s", type=float, dest="ticket_ttl_s")


#: Settings a command defaults differently from :class:`Settings`.
_COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"gateway": {"auth": "jwt"}}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    local = {"command", "feed_command", "path", "format", "limit", "idle_s"}
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in local}
    try:
        settings = Settings.load(flags, defaults=_COMMAND_DEFAULTS.get(args.command))
        if args.command == "gateway":
            _require(settings, "redis")
        if args.command == "books":
            _require(settings, "kafka", "redis")
        if args.command == "feed":
            _require(settings, "kafka")
    except SettingsError as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "dev":
            return _run(dev(settings))
        if args.command == "gateway":
            return _run(gateway(settings))
        if args.command == "books":
            return _run(books(settings))
        if args.command == "feed":
            return _run(feed(settings, args))
    except SourceError as exc:
        print(f"oddstream: --feed: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BrokerError) as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 1
    except (KafkaUnavailable, TopicLayoutError) as exc:
        print(f"oddstream: {exc}", file=sys.stderr)
        return 1
    return 2


def _require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"{flag} / ODDSTREAM_{name.upper()} is required for this command")


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


async def dev(settings: Settings) -> None:
    """The embedded default: synthetic match day -> in-memory bus -> books -> gateway."""
    store = MemoryStore(history_size=settings.history_size)
    broker = MemoryBroker()
    gateway = Gateway(settings, broker, store)
    feed = open_source(
        settings.feed,
        seed=settings.seed,
        events=settings.events,
        rate=settings.rate,
        speed=settings.speed,
    )
    pipeline = EmbeddedPipeline(feed, store, broker, stale_after_s=settings.stale_after_s or None)
    web_dist = await asyncio.to_thread(ensure_built, WEB_DIR) if settings.web == "auto" else None
    app = build_app(gateway, background=[pipeline.run], web_dist=web_dist)
    await serve(app, settings, gateway)


async def gateway(settings: Settings) -> None:
    """A gateway of the distributed mode: Redis snapshots, history and pub/sub in."""
    from channels.redis_broker import RedisBroker
    from channels.redis_store import RedisStore

    store = await RedisStore.connect(settings.redis, history_size=settings.history_size)
    broker = await RedisBroker.connect(settings.redis)
    node = Gateway(settings, broker, store)
    try:
        await serve(build_app(node), settings, node)
    finally:
        await broker.close()
        await store.close()


def _topic_names(settings: Settings) -> TopicNames:
    return TopicNames(prefix=settings.topic_prefix)


class KafkaUnavailable(Exception):
    """Kafka did not answer at start-up."""


async def _topics(settings: Settings, *, adopt: bool = False) -> None:
    """Create missing topics with ``--partitions``. With ``adopt`` (processors), feed topics
    that already exist keep their partition count: the deployment chose it."""
    topics = _topic_names(settings)
    try:
        partitions = settings.partitions
        if adopt:
            counts = await partition_counts(settings.kafka, timeout_s=15)
            partitions = next((counts[t] for t in topics.feed if t in counts), settings.partitions)
        await ensure_topics(settings.kafka, partitions, topics=topics, timeout_s=15)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} (--kafka / ODDSTREAM_KAFKA) is unreachable: {exc!r}"
        ) from None


async def books(settings: Settings) -> None:
    """A book processor of the distributed mode. SIGTERM/SIGINT: finish the step, commit,
    leave the group."""
    from channels.redis_broker import RedisBroker
    from channels.redis_store import RedisStore

    store = await RedisStore.connect(settings.redis, history_size=settings.history_size)
    broker = await RedisBroker.connect(settings.redis)
    try:
        await _topics(settings, adopt=True)
        runner = BooksRunner(
            settings.kafka,
            store,
            broker,
            config=BooksConfig(
                group_id=settings.group,
                topics=_topic_names(settings),
                stale_after_s=settings.stale_after_s or None,
            ),
        )
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stopping.append(loop.create_task(runner.stop())))

        async def report() -> None:
            while True:
                await asyncio.sleep(5)  # Progress cadence, not synchronisation.
                log.info("books: %s", runner.stats.line())

        reporter = loop.create_task(report())
        print(f"oddstream: books in group {settings.group} on {settings.kafka}", flush=True)
        try:
            await runner.run()
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, *stopping, return_exceptions=True)
            log.info("books: stopped: %s", runner.stats.line())
    finally:
        await broker.close()
        await store.close()


async def feed(settings: Settings, args: argparse.Namespace) -> None:
    """``oddstream feed synth|replay|record``."""
    if args.feed_command == "record":
        messages = await record(
            settings.kafka, topics=_topic_names(settings), limit=args.limit, idle_s=args.idle_s
        )
        count = write_jsonl(Path(args.path), messages)
        print(f"oddstream: recorded {count} feed messages to {args.path}", flush=True)
        return
    await _topics(settings)
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
    sent = dead = 0
    started = time.monotonic()
    topics = _topic_names(settings)
    async with KafkaFeedProducer(settings.kafka, topics=topics) as producer:
        async for message in source:
            await producer.send(message)
            sent += 1
            dead = await _dead_letter_skipped(producer, topics, report, dead, args)
            if sent % 1000 == 0:
                rate = sent / (time.monotonic() - started)
                end = "\r" if sys.stderr.isatty() else "\n"  # A live line on a terminal.
                print(f"oddstream: {sent} messages ({rate:,.0f}/s)", end=end, file=sys.stderr)
            if args.limit is not None and sent >= args.limit:
                break
        dead = await _dead_letter_skipped(producer, topics, report, dead, args)
        await producer.flush()
    print(
        f"oddstream: produced {sent} feed messages; {dead} unreadable records to "
        f"{topics.deadletter}",
        file=sys.stderr,
        flush=True,
    )


async def _dead_letter_skipped(
    producer: KafkaFeedProducer,
    topics: TopicNames,
    report: ReadReport,
    done: int,
    args: argparse.Namespace,
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


if __name__ == "__main__":
    sys.exit(main())
