"""A match day at high speed, and whether memory stays flat through it.

The synthetic match day (:class:`feeds.synthetic.MatchDay`, events that start, settle and
end, each replaced by a new one) is produced to a real Kafka as fast as the book processor
keeps up; one ``oddstream books`` writes a real Redis; one ``oddstream gateway`` serves
WebSocket clients: one watches the sports' lobbies all day, others come and go, following
a few live events or the lobbies for a while. Every ``every`` feed records applied, the RSS of the
books and gateway processes is sampled, and the gateway's local books and event states
(``oddstream_relay_markets``, ``oddstream_relay_events`` on its operator port);
:func:`slope` fits the growth after the warm-up.

    python -m loadtest.soak --minutes 10            # the long run (docs/performance.md)
    python -m loadtest.soak --records 40000         # the CI size (tests/faults/test_soak.py)

Needs ``ODDSTREAM_KAFKA`` and ``ODDSTREAM_REDIS`` (``eval "$(scripts/services.sh up)"``).
``--pythonpath DIR`` runs the processes from another checkout (to measure main).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from feeds.embedded import now_ms
from feeds.kafka_feed import KafkaFeedProducer, TopicNames
from feeds.model import FeedEvent, FeedMarket, FeedMessage
from feeds.synthetic import SPORTS, MatchDay
from loadtest import procs
from loadtest.e2e import drop_topics

#: Simulated ms between price ticks of a live match: fewer ticks per match, so a run of
#: tens of thousands of records sees hundreds of events start and end.
ODDS_INTERVAL_MS = 300_000
#: Longest wait for the books to apply what was produced (per sample).
CATCH_UP_S = 60.0
#: The gateway's operator port (in the soak's own range).
OPS_PORT = 27910


def slope(samples: Sequence[tuple[float, float]], warmup: float = 0.3) -> float:
    """Least-squares slope of ``y`` over ``x`` for the samples whose ``x`` lies past the
    first ``warmup`` fraction of the ``x`` range. Raises :class:`ValueError` with fewer
    than two such samples or a single ``x``."""
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), not {warmup}")
    if not samples:
        raise ValueError("no samples")
    lo, hi = min(x for x, _ in samples), max(x for x, _ in samples)
    cut = lo + (hi - lo) * warmup
    kept = [(x, y) for x, y in samples if x >= cut]
    if len(kept) < 2:
        raise ValueError("fewer than two samples after the warm-up")
    mx = sum(x for x, _ in kept) / len(kept)
    my = sum(y for _, y in kept) / len(kept)
    sxx = sum((x - mx) ** 2 for x, _ in kept)
    if sxx == 0:
        raise ValueError("every sample after the warm-up has the same x")
    return sum((x - mx) * (y - my) for x, y in kept) / sxx


@dataclass
class Result:
    """What one soak saw; RSS in KiB."""

    records: int = 0
    events_ended: int = 0
    markets: int = 0
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    held: list[tuple[int, int, int]] = field(default_factory=list)
    """(records, markets, events) of the books' progress lines: what it holds in memory
    (none from a processor that does not say)."""
    frames: int = 0
    clients: int = 0

    def slope(self, what: str, warmup: float = 0.3) -> float:
        """Growth of one :class:`Sample` field after the warm-up, per 10,000 records."""
        return slope([(s.records / 10_000, getattr(s, what)) for s in self.samples], warmup)

    def held_slope(self, warmup: float = 0.3) -> float:
        """Growth of the books' markets in memory, per 10,000 records."""
        return slope([(r / 10_000, m) for r, m, _ in self.held], warmup)

    @property
    def markets_held(self) -> list[int]:
        return [m for _, m, _ in self.held]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: v for k, v in asdict(self).items() if k not in ("samples", "held")
        }
        if self.held:
            out["books_markets"] = (self.held[0][1], self.held[-1][1], max(self.markets_held))
        with contextlib.suppress(ValueError):  # Too few progress lines (every 5 s).
            out["books_markets_per_10k"] = round(self.held_slope(), 1)
        first, last = self.samples[0], self.samples[-1]
        for what in ("books_kib", "gateway_kib", "relay_markets", "relay_events"):
            if getattr(first, what) < 0:
                continue  # A gateway without the relay gauges (main before them).
            out[f"{what}_per_10k"] = round(self.slope(what), 1)
            out[what] = (getattr(first, what), getattr(last, what))
        return out


@dataclass(frozen=True)
class Sample:
    records: int
    """Feed records the books had applied."""
    books_kib: int
    gateway_kib: int
    relay_markets: int
    relay_events: int

    def line(self) -> str:
        return (
            f"  {self.records:>9,} records  books {self.books_kib:>7,} KiB  gateway "
            f"{self.gateway_kib:>7,} KiB  relay markets {self.relay_markets:>5}  "
            f"events {self.relay_events:>4}"
        )


class _Day:
    """The feed: the match day's messages, and which events are live now."""

    def __init__(self, seed: int, events: int) -> None:
        self._messages: Iterator[FeedMessage] = iter(
            MatchDay(seed=seed, events=events, start_ms=now_ms(), odds_interval_ms=ODDS_INTERVAL_MS)
        )
        self.live: dict[str, None] = {}
        self.ended = 0
        self.markets = 0

    def take(self, n: int) -> list[FeedMessage]:
        out = list(itertools.islice(self._messages, n))
        for m in out:
            if isinstance(m, FeedEvent):
                if m.phase == "ended":
                    self.live.pop(m.event_id, None)
                    self.ended += 1
                else:
                    self.live[m.event_id] = None
            elif isinstance(m, FeedMarket):
                self.markets += 1
        return out


class _Client:
    """A WebSocket client that subscribes once and reads everything until closed."""

    def __init__(self, conn: ClientConnection, on_frame: Callable[[], None]) -> None:
        self.conn = conn
        self._on_frame = on_frame
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.conn:
                self._on_frame()

    async def close(self) -> None:
        await self.conn.close()
        await self.reader


async def _subscribe(url: str, on_frame: Callable[[], None], **subs: list[str]) -> _Client:
    conn = await connect(url, subprotocols=["oddstream.v1.json"], max_size=2**24)  # type: ignore[list-item]
    await conn.send(json.dumps({"type": "subscribe", **subs}))
    return _Client(conn, on_frame)


async def _applied(redis: aioredis.Redis) -> int:
    """Feed records the books have applied: the sum of the stored next offsets."""
    offsets: dict[bytes, bytes] = await redis.hgetall("os:offsets")
    return sum(int(v) for v in offsets.values())


async def run(
    kafka: str,
    redis_base: str,
    *,
    records: int | None,
    minutes: float | None,
    every: int = 2_000,
    events: int = 40,
    churn: int = 4,
    seed: int = 11,
    db: int = 7,
    retention_s: float | None = 2.0,
    pythonpath: str | None = None,
    ops_port: int = OPS_PORT,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> Result:
    """One soak; stops after ``records`` feed records or ``minutes``, whichever first."""
    uid = uuid.uuid4().hex[:8]
    prefix, group = f"soak{uid}.", f"soak{uid}"
    redis_url = f"{redis_base.rsplit('/', 1)[0]}/{db}"
    redis = aioredis.from_url(redis_url)
    await redis.flushdb()
    env = {"PYTHONPATH": pythonpath} if pythonpath else None

    def oddstream(*args: str) -> list[str]:
        # -P: the working directory (this checkout) does not come before PYTHONPATH.
        return [sys.executable, *(["-P"] if pythonpath else []), "-m", "oddstream.cli", *args]

    tuning = [] if retention_s is None else ["--retention-s", str(retention_s)]
    books = procs.Child(
        "books",
        oddstream(
            "books", "--kafka", kafka, "--redis", redis_url, "--group", group,
            "--topic-prefix", prefix, "--partitions", "4", "--log-level", "info",
            "--stale-after-s", "0", *tuning,
        ),
        env,
    )  # fmt: skip
    gateway = procs.Child(
        "gateway",
        oddstream(
            "gateway", "--auth", "none", "--workers", "1", "--redis", redis_url, "--port", "0",
            "--ops-port", str(ops_port), "--max-connections-per-ip", "0",
            "--log-level", "warning",
        ),
        env,
    )  # fmt: skip
    result = Result()
    clients: list[_Client] = []
    deadline = time.monotonic() + minutes * 60 if minutes else float("inf")
    limit = records or sys.maxsize

    def frame() -> None:
        result.frames += 1

    try:
        lines = []
        for child, needle in ((books, "books in group"), (gateway, "serving on")):
            line = await asyncio.to_thread(child.wait_line, needle, timeout_s=60)
            if line is None:
                raise RuntimeError(f"{child.name} did not start: {child.tail(5)}")
            lines.append(line)
        base = lines[1].split("serving on ", 1)[1].split()[0].rstrip("/")
        url = base.replace("http://", "ws://") + "/ws"
        day = _Day(seed, events)
        rng = random.Random(seed)
        started = time.monotonic()
        async with KafkaFeedProducer(kafka, topics=TopicNames(prefix=prefix)) as producer:
            while result.records < limit and time.monotonic() < deadline:
                for message in day.take(min(every, limit - result.records)):
                    await producer.send(message)
                    result.records += 1
                await producer.flush()
                await _caught_up(redis, result.records, (books, gateway))
                gauges = await asyncio.to_thread(_gauges, ops_port)
                sample = Sample(
                    result.records,
                    procs.rss_kib([books.pid]),
                    procs.rss_kib([gateway.pid]),
                    gauges.get("oddstream_relay_markets", -1),
                    gauges.get("oddstream_relay_events", -1),
                )
                result.samples.append(sample)
                if verbose:
                    log(sample.line())
                if not clients:  # One client watches the lobbies all day, from the start.
                    clients.append(await _subscribe(url, frame, lobbies=list(SPORTS)))
                    result.clients += 1
                # Churn: the oldest come-and-go clients leave; new ones follow a few live
                # events, or (one in four) the lobbies.
                while len(clients) > 1 + churn:
                    await clients.pop(1).close()
                live = list(day.live)
                for i in range(min(churn, len(live))):
                    subs = (
                        {"lobbies": list(SPORTS)}
                        if i == 0
                        else {"events": rng.sample(live, min(3, len(live)))}
                    )
                    clients.append(await _subscribe(url, frame, **subs))
                    result.clients += 1
        result.seconds = time.monotonic() - started
        result.held = _held(books.lines)
        result.events_ended, result.markets = day.ended, day.markets
        log(
            f"soak: {result.records:,} records in {result.seconds:.0f}s, {day.ended} events "
            f"ended, {day.markets} markets, {result.clients} clients, {result.frames:,} frames"
        )
        return result
    finally:
        for client in clients:
            with contextlib.suppress(OSError, ConnectionClosed):
                await client.close()
        for child in (gateway, books):
            child.stop()
            if child.proc.stdout is not None:
                child.proc.stdout.close()
        try:
            await redis.flushdb(asynchronous=True)  # A day of keys: freed in the background.
        except RedisError as exc:
            log(f"soak: flushing Redis db {db} failed: {exc!r}")
        await redis.aclose()
        await drop_topics(kafka, prefix)


async def _caught_up(redis: aioredis.Redis, produced: int, children: Sequence[procs.Child]) -> None:
    """Until the books have applied ``produced`` records. Another process's progress,
    read from storage: polled."""
    async with asyncio.timeout(CATCH_UP_S):
        while await _applied(redis) < produced:
            for child in children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited: {child.tail(10)}")
            await asyncio.sleep(0.05)


_PROGRESS = re.compile(r"books: records=(\d+) .*markets=(\d+) events=(\d+)")


def _held(lines: Sequence[str]) -> list[tuple[int, int, int]]:
    """(records, markets, events) of each progress line of the books (every 5 s)."""
    out = []
    for line in lines:
        m = _PROGRESS.search(line)
        if m is not None:
            out.append((int(m[1]), int(m[2]), int(m[3])))
    return out


def _gauges(port: int) -> dict[str, int]:
    """The gateway's unlabelled metrics (a gateway without the relay gauges: none)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if not line.startswith("#") and "{" not in name:
            with contextlib.suppress(ValueError):  # Prometheus writes gauges as floats.
                out[name] = int(float(value))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--every", type=int, default=2_000, help="records per RSS sample")
    parser.add_argument("--events", type=int, default=40, help="concurrent events")
    parser.add_argument("--retention-s", type=float, default=2.0, help="0: not passed (main)")
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--pythonpath", default=None)
    args = parser.parse_args(argv)
    if args.minutes is None and args.records is None:
        parser.error("give --minutes and/or --records")
    kafka, redis = os.environ.get("ODDSTREAM_KAFKA"), os.environ.get("ODDSTREAM_REDIS")
    if not kafka or not redis:
        parser.error('ODDSTREAM_KAFKA / ODDSTREAM_REDIS not set (eval "$(scripts/services.sh up)")')
    procs.install_cleanup()
    result = asyncio.run(
        run(
            kafka,
            redis,
            records=args.records,
            minutes=args.minutes,
            every=args.every,
            events=args.events,
            db=args.redis_db,
            retention_s=args.retention_s or None,
            pythonpath=args.pythonpath,
            verbose=True,
            log=lambda line: print(line, flush=True),
        )
    )
    for records, markets, events in result.held:
        print(f"  {records:>9,} records  books hold {markets:>6,} markets {events:>5,} events")
    print(msgspec.json.encode(result.summary()).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
