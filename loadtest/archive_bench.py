"""The archive's throughput: ``deltas`` topic -> ``oddstream archive`` -> MySQL.

    python -m loadtest.archive_bench --kafka 127.0.0.1:19092 \\
        --mysql mysql://oddstream:oddstream@127.0.0.1:13306/oddstream --feed 200000

A pure book processor turns ``--feed`` synthetic match-day messages into market
messages, which are produced to a fresh ``deltas`` topic first; then one
:class:`~archive.consumer.ArchiveRunner` (in this process) reads them all into a fresh
database (``<database>_bench_<hex>``, dropped afterwards, as is the topic). Printed: the
deltas archived per second between the first batch stored and the last (the group join
left out), the rows per table, the history query's p50/p99 on the busiest market
(``--queries``), and the goal (>= 70k deltas/s: one ``books`` process at full speed).
Nothing asserts a timing; on a shared machine the figure is only indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from itertools import islice
from typing import Any

import msgspec
from aiokafka.admin import AIOKafkaAdminClient

from archive.consumer import ArchiveConfig, ArchiveRunner
from archive.db import MysqlUrl, connect
from archive.query import History
from feeds.embedded import epoch_minter
from feeds.kafka_feed import TopicNames, ensure_topics, new_producer
from feeds.model import encode_feed, topic_of
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay

GOAL = 70_000
TABLES = ("market_messages", "market_changes", "prices", "results", "selections")


def market_messages(feed: int, events: int) -> list[tuple[str, bytes]]:
    processor = Processor(epoch_minter())
    records = [
        FeedRecord(topic_of(m), 0, i, encode_feed(m), m.event_id.encode())
        for i, m in enumerate(islice(MatchDay(seed=3, events=events), feed))
    ]
    return processor.process(records).deltas


async def produce(bootstrap: str, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    producer = new_producer(bootstrap, client_id="archive-bench", linger_ms=20)
    await producer.start()
    try:
        futures = []
        for market_id, payload in messages:
            futures.append(await producer.send(topic, payload, key=market_id.encode()))
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def query_latency(url: MysqlUrl, messages: Sequence[tuple[str, bytes]], count: int) -> None:
    """p50/p99 of ``History.market_history`` (book at an instant + a page of 100 changes)
    on the market with the most messages, at instants spread over its life, one at a time."""
    busiest = Counter(market_id for market_id, _ in messages).most_common(1)[0][0]
    stamps = sorted(
        msgspec.json.decode(payload, type=_Stamped).ts
        for market_id, payload in messages
        if market_id == busiest
    )
    history = History(url, pool_size=1)
    try:
        took = []
        for i in range(count):
            at = stamps[i * (len(stamps) - 1) // max(count - 1, 1)]
            start = time.perf_counter()
            await history.market_history(busiest, at, stamps[-1], limit=100, cursor=None)
            took.append(time.perf_counter() - start)
    finally:
        await history.close()
    took.sort()
    p50, p99 = took[len(took) // 2], took[min(len(took) - 1, len(took) * 99 // 100)]
    print(
        f"archive_bench: history of the busiest market ({len(stamps)} messages), {count} "
        f"queries: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )


class _Stamped(msgspec.Struct):
    ts: int


async def run(args: argparse.Namespace) -> int:
    base = MysqlUrl.parse(args.mysql)
    tag = uuid.uuid4().hex[:10]
    topics = TopicNames(prefix=f"bench-{tag}-")
    url = base.with_database(f"{base.database}_bench_{tag}")
    messages = market_messages(args.feed, args.events)
    print(f"archive_bench: {len(messages)} market messages from {args.feed} feed messages")
    await ensure_topics(args.kafka, args.partitions, topics=topics, timeout_s=30)
    admin_db: Any = await connect(base, autocommit=True)
    async with admin_db.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4")
    try:
        await produce(args.kafka, topics.deltas, messages)
        runner = ArchiveRunner(
            args.kafka,
            url,
            topics.deltas,
            ArchiveConfig(group_id=f"bench-{tag}", max_records=args.batch),
        )
        done = asyncio.Event()
        first: list[tuple[float, int]] = []

        def observe() -> None:
            # Offsets stored, not records read: a rebalance makes a batch be read again.
            stored = sum(runner.positions.values())
            if runner.stats.batches == 1:
                first.append((time.perf_counter(), stored))
            if stored >= len(messages):
                done.set()

        runner.observers.append(observe)
        task = asyncio.create_task(runner.run())
        cpu = time.process_time()
        async with asyncio.timeout(args.timeout_s):
            await done.wait()
        cpu = time.process_time() - cpu
        elapsed = time.perf_counter() - first[0][0]
        timed = len(messages) - first[0][1]
        runner.stop()
        await task
        async with admin_db.cursor() as cur:
            counts = {}
            for table in TABLES:
                await cur.execute(f"SELECT COUNT(*) FROM `{url.database}`.{table}")  # noqa: S608
                counts[table] = (await cur.fetchone())[0]
        rate = timed / elapsed
        print(
            f"archive_bench: {timed} deltas in {elapsed:.2f} s after the first batch = "
            f"{rate:,.0f} deltas/s; archive CPU {cpu:.2f} s in all; batch {args.batch}; "
            f"rebalances {runner.stats.rebalances}; rows {counts}"
        )
        print(f"archive_bench: goal >= {GOAL:,} deltas/s: {'met' if rate >= GOAL else 'NOT met'}")
        await query_latency(url, messages, args.queries)
    finally:
        async with admin_db.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{url.database}`")
        admin_db.close()
        admin: Any = AIOKafkaAdminClient(bootstrap_servers=args.kafka)
        await admin.start()
        try:
            await admin.delete_topics([*topics.feed, topics.deltas, topics.deadletter])
        finally:
            await admin.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.archive_bench", description=__doc__)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--mysql", required=True)
    parser.add_argument("--feed", type=int, default=100_000, help="synthetic feed messages")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=5_000, help="records per transaction")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--queries", type=int, default=200, help="history queries timed")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
