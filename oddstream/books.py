"""``oddstream books``: a book processor, Kafka in; Redis and Kafka out, with its owner beat
(:mod:`feeds.liveness`). SIGTERM/SIGINT: finish the step, commit, leave the group."""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from feeds.books_runner import BooksConfig, BooksRunner
from feeds.liveness import OwnerBeats
from oddstream import topics
from oddstream.options import BooksSettings

log = logging.getLogger("oddstream")

#: Seconds between two progress lines in the log.
REPORT_S = 5.0


async def main(settings: BooksSettings) -> None:
    store = await RedisStore.connect(settings.redis, history_size=settings.history_size)
    broker = await RedisBroker.connect(settings.redis)
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
                heartbeat_interval_ms=settings.kafka_heartbeat_ms,
            ),
        )
        beats = OwnerBeats(
            broker,
            runner,
            beat_s=settings.owner_beat_ms / 1000,
            evict_after_s=settings.owner_evict_ms / 1000 or None,
        )
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stopping.append(loop.create_task(runner.stop())))

        async def report() -> None:
            while True:
                await asyncio.sleep(REPORT_S)  # Progress cadence, not synchronisation.
                log.info("books: %s", runner.stats.line())

        reporter = loop.create_task(report())
        beating = loop.create_task(beats.run())
        print(f"oddstream: books in group {settings.group} on {settings.kafka}", flush=True)
        try:
            await runner.run()
        finally:
            reporter.cancel()
            beating.cancel()
            await asyncio.gather(reporter, beating, *stopping, return_exceptions=True)
            log.info("books: stopped: %s", runner.stats.line())
    finally:
        await broker.close()
        await store.close()
