"""The distributed scenarios of ``loadtest.bench``, on real Kafka and Redis.

* ``e2e``: ``oddstream feed synth`` -> Kafka -> ``oddstream books`` -> Redis ->
  ``oddstream gateway`` -> clients subscribed like real front ends (half on a sport lobby,
  three in ten on an event page, two in ten on a bet slip of three markets). Latency is
  from the feed's own timestamp (stamped by the feed process when it emits the message)
  to the client's receipt: every hop in between is counted.
* ``books``: feed messages per second through one ``oddstream books`` process (Redis
  snapshots, history and pub/sub out, and the Kafka ``deltas`` topic), measured from the
  consumer group's committed offsets over a backlog produced beforehand.

Both need ``ODDSTREAM_KAFKA`` and ``ODDSTREAM_REDIS`` (``eval "$(scripts/services.sh up)"``);
without them they are skipped with a note and never count as measured. Each run owns a
unique topic prefix and consumer group, and one Redis database (``--redis-db``, flushed
before and after).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest import procs, profile, stages
from loadtest.bench import (
    FULL,
    LATENCY_DELIVERIES_PER_S,
    QUICK,
    Sample,
    client_processes,
    drain,
    new_board,
    spawn_clients,
    stop_clients,
    wait_connected,
)
from loadtest.board import H_PUBLISHED, H_RATE_MILLI, H_RECORD, S_CLOSED, diff, max_ms, percentiles

Log = Callable[[str], None]

FEED_TOPICS = ("markets", "odds", "results")
WARM_RATE = 40.0
"""Feed messages/s while the clients connect and during calibration."""
MAX_RATE = 5_000.0
CALIBRATE_S = 3.0
E2E_KEYS = (
    "clients",
    "delivered_per_s",
    "deltas_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "rss_kib_per_conn",
    "ceiling_per_s",
    "ratio_to_ceiling",
)


def _services() -> tuple[str, str] | None:
    kafka = os.environ.get("ODDSTREAM_KAFKA", "")
    redis = os.environ.get("ODDSTREAM_REDIS", "")
    return (kafka, redis) if kafka and redis else None


def _no_peers(reason: str = "not applicable") -> dict[str, dict[str, Any]]:
    """The fan-out peers' entries of a scenario they have no part in."""
    return {
        p: {"available": False, "reason": reason, "delivered_per_s": None, "p99_ms": None}
        for p in ("broadcaster", "pushpin")
    }


def _skipped(name: str, note: str, log: Log) -> dict[str, Any]:
    log(f"\n== {name}: skipped: {note} ==")
    result: dict[str, Any] = dict.fromkeys(E2E_KEYS)
    result.update(
        name=name,
        measured=False,
        skipped=True,
        note=note,
        clients=0,
        peers=_no_peers(),
    )
    return result


def _redis_url(base: str, db: int) -> str:
    return f"{base.rsplit('/', 1)[0]}/{db}"


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def _redis_cpu(url: str) -> float | None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except redis.RedisError:
        return None
    finally:
        client.close()


def _get_json(url: str, timeout_s: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _oddstream(*args: str) -> list[str]:
    return procs.python("oddstream.cli", *args)


def _books(kafka: str, redis: str, group: str, prefix: str, ops_port: int = 0) -> procs.Child:
    """An ``oddstream books`` process of the benchmark's topics and group (its operator
    listener on ``ops_port``; 0: none)."""
    return procs.Child(
        "books",
        _oddstream(
            "books", "--kafka", kafka, "--redis", redis, "--group", group,
            "--topic-prefix", prefix, "--partitions", "4", "--log-level", "warning",
            "--ops-port", str(ops_port),
        ),
    )  # fmt: skip


async def drop_topics(kafka: str, prefix: str, timeout_s: float = 15) -> None:
    """Delete the topics named ``prefix*`` (a scenario's or a fault-suite deployment's),
    so the broker stays small (a broker with many partitions restarts slowly, which
    would change what a Kafka scenario tests). Best effort: the broker may be down."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            try:
                names = [t for t in await admin.list_topics() if t.startswith(prefix)]
                if names:
                    await admin.delete_topics(names)
            finally:
                await admin.close()
    except (KafkaError, OSError, TimeoutError):
        pass


def _subscriptions(base: str, count: int, rng: random.Random) -> list[str]:
    """Commands of ``count`` front ends: lobby, event page or bet slip."""
    events = _get_json(f"{base}/v1/events")
    markets = _get_json(f"{base}/v1/markets")
    sports = sorted({e["sport"] for e in events}) or ["football"]
    event_ids = [e["event_id"] for e in events]
    market_ids = [m["market_id"] for m in markets if m.get("status") in ("open", "suspended")]
    market_ids = market_ids or [m["market_id"] for m in markets]
    commands = []
    for i in range(count):
        kind = i % 10
        if kind < 5 or not event_ids:
            cmd: dict[str, Any] = {"type": "subscribe", "lobbies": [sports[i % len(sports)]]}
        elif kind < 8:
            cmd = {"type": "subscribe", "events": [rng.choice(event_ids)]}
        else:
            cmd = {"type": "subscribe", "markets": rng.sample(market_ids, min(3, len(market_ids)))}
        commands.append(json.dumps(cmd, separators=(",", ":")))
    return commands


def e2e_scenario(
    *,
    quick: bool,
    clients: int,
    rate: float | None,
    redis_db: int,
    log: Log,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """``rate`` fixes the feed's messages/s; by default it is calibrated so that the
    clients receive the target deliveries/s (20k; 2k with ``quick``)."""
    services = _services()
    if services is None:
        return _skipped(
            "e2e",
            'ODDSTREAM_KAFKA / ODDSTREAM_REDIS not set (eval "$(scripts/services.sh up)")',
            log,
        )
    kafka, redis_base = services
    n = 50 if quick else clients
    target = 2_000 if quick else LATENCY_DELIVERIES_PER_S
    timing = QUICK if quick else FULL
    redis = _redis_url(redis_base, redis_db)
    uid = uuid.uuid4().hex[:8]
    prefix, group = f"bench{uid}.", f"bench{uid}"
    log(
        f"\n== e2e: feed -> Kafka -> books -> Redis -> gateway -> {n} clients "
        f"(target {target:,} deliveries/s, Redis db {redis_db}, topics {prefix}*) =="
    )
    _flush(redis)
    board = new_board(client_processes(n))
    children: list[procs.Child] = []
    servers: list[procs.Child] = []
    work = Path(tempfile.mkdtemp(prefix="oddstream-e2e-"))
    # The operator listeners the stage table is read from (loopback, free ports).
    books_ops, gateway_ops = procs.free_ports(2)
    metrics_urls = [f"http://127.0.0.1:{p}/metrics" for p in (books_ops, gateway_ops)]
    try:
        books = _books(kafka, redis, group, prefix, books_ops)
        servers.append(books)
        if books.wait_line("books in group", timeout_s=60) is None:
            return _failed("e2e", f"books did not start: {books.tail(5)!r}", log)
        gateway = procs.Child(
            "gateway",
            # Every client comes from loopback: no per-address cap. The operator port
            # serves the stages and the relay's counters (duplicates received: the
            # fan-in). One process: its RSS and /metrics are the gateway's.
            _oddstream(
                "gateway",
                *("--auth", "none", "--workers", "1"),
                *("--redis", redis, "--port", "0", "--log-level", "warning"),
                *("--max-connections-per-ip", "0", "--ops-port", str(gateway_ops)),
            ),
        )
        servers.append(gateway)
        line = gateway.wait_line("serving on", timeout_s=60)
        if line is None:
            return _failed("e2e", f"gateway did not start: {gateway.tail(5)!r}", log)
        base = line.split("serving on ", 1)[1].split()[0].rstrip("/")
        gateway_rss0 = procs.rss_kib([gateway.pid])
        board.set(H_RATE_MILLI, round(WARM_RATE * 1000))
        feed = procs.Child(
            "feed",
            procs.python(
                "loadtest.feeder", "--board", str(board.path), "--kafka", kafka,
                "--topic-prefix", prefix, "--partitions", "4", "--seed", "7", "--events", "12",
            ),
        )  # fmt: skip
        servers.append(feed)
        deadline = time.monotonic() + 60
        events: list[Any] = []
        while time.monotonic() < deadline and len(events) < 4:
            time.sleep(0.5)  # Waiting for the feed to reach the gateway's storage.
            with contextlib.suppress(OSError, ValueError):
                events = _get_json(f"{base}/v1/events")
            if not feed.alive():
                return _failed("e2e", f"feed stopped: {feed.tail(5)!r}", log)
        if len(events) < 4:
            return _failed("e2e", "no events reached the gateway within 60 s", log)
        time.sleep(1 if quick else 3)  # Let the markets be defined.
        commands = work / "commands.txt"
        commands.write_text("\n".join(_subscriptions(base, n, random.Random(7))) + "\n")
        ws = base.replace("http://", "ws://") + "/ws"
        children = spawn_clients(
            board, ws, n, commands_file=commands, subprotocol="oddstream.v1.json"
        )
        connected, failed = wait_connected(board, children, servers, n)
        # Every subscription sent its snapshots: wait until that burst has been delivered.
        time.sleep(timing.settle_s)
        drained = drain(board, timeout_s=60, live=True)
        # Calibrate: deliveries per feed message with these clients, then the feed rate
        # that makes the target deliveries per second (unless --e2e-rate fixed it).
        a = Sample(board, [gateway.pid])
        fed0 = board.get(H_PUBLISHED)
        time.sleep(CALIBRATE_S)
        b = Sample(board, [gateway.pid])
        fed = board.get(H_PUBLISHED) - fed0
        per_message = (b.frames - a.frames) / fed if fed else 0.0
        feed_rate = rate or (min(MAX_RATE, target / per_message) if per_message > 0 else WARM_RATE)
        board.set(H_RATE_MILLI, round(feed_rate * 1000))
        time.sleep(timing.latency_settle_s)
        idle_rss = procs.rss_kib([gateway.pid])
        pids = [gateway.pid]
        before = Sample(board, pids)
        books_cpu0 = procs.cpu_seconds(procs.tree(books.pid))
        feed_cpu0 = procs.cpu_seconds(procs.tree(feed.pid))
        redis_cpu0 = _redis_cpu(redis)
        fast0 = board.histogram()
        stages0 = stages.scrape(metrics_urls)
        board.set(H_RECORD, 1)
        measure_s = timing.measure_s + (0 if quick else 4)
        target_file = profile_dir / "e2e-gateway.txt" if profile_dir is not None else None
        sampler = profile.start(gateway.pid, measure_s, target_file) if target_file else None
        time.sleep(measure_s)
        board.set(H_RECORD, 0)
        if target_file is not None:
            profile.finish(sampler, target_file, 10, log)
        after = Sample(board, pids)
        stage_table = stages.table(stages.diff(stages.scrape(metrics_urls), stages0))
        span = after.t - before.t
        hist = diff(board.histogram(), fast0)
        pct = percentiles(hist, (50, 95, 99))
        redis_cpu1 = _redis_cpu(redis)
        metrics = _get_json_text(metrics_urls[1])
        result: dict[str, Any] = dict.fromkeys(E2E_KEYS)
        result.update(
            name="e2e",
            transport="ws",
            measured=connected > 0 and sum(hist) > 0,
            skipped=False,
            clients_requested=n,
            clients=connected,
            connect_failed=failed,
            settle_drain_s=drained,
            target_deliveries_per_s=target,
            deliveries_per_feed_message=round(per_message, 1),
            feed_rate=round(feed_rate, 1),
            delivered_per_s=round((after.frames - before.frames) / span),
            deltas_per_s=round((after.deltas - before.deltas) / span),
            p50_ms=_r(pct[50]),
            p95_ms=_r(pct[95]),
            p99_ms=_r(pct[99]),
            max_ms=_r(max_ms(hist)),
            latency_samples=sum(hist),
            rss_kib_per_conn=round((idle_rss - gateway_rss0) / max(1, connected), 2),
            rss_kib_per_conn_load=round((after.rss - gateway_rss0) / max(1, connected), 2),
            gateway_cpu_cores=round((after.cpu - before.cpu) / span, 2),
            books_cpu_cores=round(
                (procs.cpu_seconds(procs.tree(books.pid)) - books_cpu0) / span, 2
            ),
            feed_cpu_cores=round((procs.cpu_seconds(procs.tree(feed.pid)) - feed_cpu0) / span, 2),
            redis_cpu_cores=(
                round((redis_cpu1 - redis_cpu0) / span, 2)
                if redis_cpu0 is not None and redis_cpu1 is not None
                else None
            ),
            closed_by_server=board.total(S_CLOSED),
            gateway_metrics={
                k: v
                for k, v in metrics.items()
                if k.startswith(("oddstream_relay", "oddstream_conn"))
            },
            stages=stage_table,
            note="ceiling and peers are not applicable end to end",
            peers=_no_peers("not applicable end to end"),
        )
        log(
            f"  {connected} clients, feed {result['feed_rate']:g} msg/s "
            f"({result['deliveries_per_feed_message']} deliveries each): "
            f"{result['delivered_per_s']:,} deliveries/s "
            f"({result['deltas_per_s']:,} deltas/s), feed->client p50 {_f(result['p50_ms'])} "
            f"p95 {_f(result['p95_ms'])} p99 {_f(result['p99_ms'])} max {_f(result['max_ms'])} ms; "
            f"gateway cpu {result['gateway_cpu_cores']}, books cpu {result['books_cpu_cores']}, "
            f"redis cpu {result['redis_cpu_cores']}; "
            f"{_f(result['rss_kib_per_conn'])} KiB/conn idle; relay received "
            f"{metrics.get('oddstream_relay_received_total')}, of which duplicates "
            f"{metrics.get('oddstream_relay_duplicates_total')}"
        )
        log("  stages (from the processes' /metrics over the window):")
        for line in stages.lines(stage_table):
            log("  " + line)
        return result
    finally:
        stop_clients(board, children)
        for child in reversed(servers):
            child.stop(15)
        board.close()
        with contextlib.suppress(OSError):
            board.path.unlink()
        with contextlib.suppress(OSError):
            for f in work.iterdir():
                f.unlink()
            work.rmdir()
        with contextlib.suppress(Exception):
            _flush(redis)
        asyncio.run(drop_topics(kafka, prefix, 30))


def _get_json_text(url: str) -> dict[str, float]:
    """Prometheus text -> {name: value} (unlabelled samples only)."""
    out: dict[str, float] = {}
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(url, timeout=20) as response,  # noqa: S310 - loopback
    ):
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


def _failed(name: str, why: str, log: Log) -> dict[str, Any]:
    log(f"  {name}: failed: {why}")
    result = _skipped(name, f"failed: {why}", lambda _: None)
    result["skipped"] = False
    return result


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# -- books throughput ---------------------------------------------------------------------------


async def _watch(
    kafka: str, prefix: str, group: str, books: procs.Child, timeout_s: float
) -> list[tuple[float, int, int]]:
    """Poll the group's committed offsets until the backlog is consumed; returns samples
    of (time, committed, end) summed over the feed topics' partitions."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from feeds.kafka_feed import partition_counts

    counts = await partition_counts(kafka, timeout_s=15)
    tps = [
        TopicPartition(prefix + t, p) for t in FEED_TOPICS for p in range(counts.get(prefix + t, 0))
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, request_timeout_ms=10_000)
    await admin.start()
    await consumer.start()
    samples: list[tuple[float, int, int]] = []
    try:
        end = sum((await consumer.end_offsets(tps)).values())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and books.alive():
            committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group), 15)
            done = sum(max(0, meta.offset) for tp, meta in committed.items() if tp in tps)
            samples.append((time.monotonic(), done, end))
            if end and done >= end:
                break
            await asyncio.sleep(0.25)  # Polling cadence, bounded by the deadline.
    finally:
        await consumer.stop()
        await admin.close()
    return samples


def books_scenario(
    *,
    quick: bool,
    messages: int | None,
    redis_db: int,
    log: Log,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    services = _services()
    if services is None:
        return _skipped(
            "books",
            'ODDSTREAM_KAFKA / ODDSTREAM_REDIS not set (eval "$(scripts/services.sh up)")',
            log,
        )
    kafka, redis_base = services
    total = messages or (3_000 if quick else 300_000)
    redis = _redis_url(redis_base, redis_db)
    uid = uuid.uuid4().hex[:8]
    prefix, group = f"bench{uid}.", f"bench{uid}"
    log(f"\n== books: {total:,} feed messages through one processor (Redis db {redis_db}) ==")
    _flush(redis)
    children: list[procs.Child] = []
    try:
        started = time.monotonic()
        producer = procs.Child(
            "feed",
            _oddstream(
                "feed",
                "synth",
                "--ops-port",
                "0",
                "--kafka",
                kafka,
                "--topic-prefix",
                prefix,
                "--partitions",
                "4",
                "--seed",
                "11",
                "--events",
                "40",
                "--rate",
                "1000000000",
                "--limit",
                str(total),
                "--log-level",
                "warning",
            ),
        )
        children.append(producer)
        if producer.wait_line("produced", timeout_s=60 + total / 2000) is None:
            return _failed("books", f"feed did not finish: {producer.tail(5)!r}", log)
        producer.stop(10)
        log(f"  produced {total:,} messages in {time.monotonic() - started:.1f} s")
        books = _books(kafka, redis, group, prefix)
        books_started = time.monotonic()
        children.append(books)
        cpu0 = procs.cpu_seconds(procs.tree(books.pid))
        redis_cpu0 = _redis_cpu(redis)
        target_file = profile_dir / "books.txt" if profile_dir is not None else None
        # Sample the middle of the run: it starts once the group is joined (~5 s).
        sampler = (
            profile.start(books.pid, min(20, total / 20_000), target_file, delay_s=5)
            if target_file is not None
            else None
        )
        samples = asyncio.run(_watch(kafka, prefix, group, books, 60 + total / 5000))
        if target_file is not None:
            profile.finish(sampler, target_file, 30, log)
        cpu1 = procs.cpu_seconds(procs.tree(books.pid))
        redis_cpu1 = _redis_cpu(redis)
        rss = procs.rss_kib(procs.tree(books.pid))
        end = samples[-1][2] if samples else 0
        done = samples[-1][1] if samples else 0
        # The rate over the middle of the run: from 5 % to the end of the backlog, so the
        # group join and the first fetch do not count against it.
        start = next((s for s in samples if s[1] >= 0.05 * end), None) if end else None
        finish = next((s for s in samples if s[1] >= end), samples[-1] if samples else None)
        rate = None
        with_startup = False
        if start is not None and finish is not None and finish[0] > start[0]:
            rate = round((finish[1] - start[1]) / (finish[0] - start[0]))
        elif finish is not None and finish[1] > 0:
            # A backlog too small to sample mid-run (--quick): count from the process
            # start, group join included, so an underestimate.
            rate = round(finish[1] / (finish[0] - books_started))
            with_startup = True
        span = (finish[0] - samples[0][0]) if samples and finish else None
        result: dict[str, Any] = dict.fromkeys(E2E_KEYS)
        result.update(
            name="books",
            measured=rate is not None and done >= end > 0,
            skipped=False,
            clients=0,
            messages=total,
            consumed=done,
            feed_per_s=rate,
            rate_includes_startup=with_startup,
            books_cpu_cores=round((cpu1 - cpu0) / span, 2) if span else None,
            redis_cpu_cores=(
                round((redis_cpu1 - redis_cpu0) / span, 2)
                if span and redis_cpu0 is not None and redis_cpu1 is not None
                else None
            ),
            books_rss_kib=rss,
            note="feed messages/s in, through one processor with Redis and Kafka out",
            peers=_no_peers(),
        )
        log(
            f"  {done:,}/{end:,} consumed; {rate if rate is not None else '-'} feed messages/s; "
            f"books cpu {result['books_cpu_cores']}, redis cpu {result['redis_cpu_cores']}"
        )
        return result
    finally:
        for child in reversed(children):
            child.stop(15)
        with contextlib.suppress(Exception):
            _flush(redis)
        asyncio.run(drop_topics(kafka, prefix, 30))
