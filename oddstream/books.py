"""``oddstream books``: a book processor, Kafka in; Redis and Kafka out, with its owner beat
(:mod:`feeds.liveness`). SIGTERM/SIGINT: finish the step, commit, leave the group."""

from __future__ import annotations

import asyncio

from channels.redis_cluster import connect_broker
from channels.redis_store import RedisStore
from feeds.books_runner import BooksConfig, BooksRunner
from feeds.liveness import OwnerBeats
from feeds.observe import BooksCollector
from oddstream import topics
from oddstream.ops import operator_listener
from oddstream.options import BooksSettings
from oddstream.process import stoppable
from oddstream.tracing import traced


async def main(settings: BooksSettings) -> None:
    prefix = settings.redis_prefix
    store = await RedisStore.connect(
        settings.redis, history_size=settings.history_size, prefix=prefix
    )
    broker = await connect_broker(settings.redis, prefix=prefix)
    try:
        await topics.ensure(settings, adopt=True)
        runner = BooksRunner(
            settings.kafka,
            store,
            broker,
            config=BooksConfig(
                group_id=settings.group,
                topics=topics.names(settings),
                stale_after_s=settings.stale_after_s or None,
                metrics=settings.metrics == "on",
                exactly_once=settings.deltas_delivery == "exactly-once",
                retention_s=settings.retention_s or None,
                finished_ttl_s=settings.finished_ttl_s or None,
                heartbeat_interval_ms=settings.kafka_heartbeat_ms,
            ),
        )
        beats = OwnerBeats(
            broker,
            runner,
            beat_s=settings.owner_beat_ms / 1000,
            evict_after_s=settings.owner_evict_ms / 1000 or None,
        )
        ops = operator_listener(
            "books",
            settings.ops_host,
            settings.ops_port,
            # A member of the group with its assignment done (it may hold no partition
            # when the group has more members than partitions).
            lambda: runner.stats.rebalances > 0 and not runner.ended,
            [BooksCollector(runner)],
        )
        async with stoppable("books", runner.stop, runner.stats.line):
            print(f"oddstream: books in group {settings.group} on {settings.kafka}", flush=True)
            beating = asyncio.create_task(beats.run())
            try:
                with traced("books", settings.traces):
                    async with ops:
                        await runner.run()
            finally:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
    finally:
        await broker.close()
        await store.close()
