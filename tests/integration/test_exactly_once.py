"""The exactly-once ``deltas`` topic (:mod:`feeds.transactions`) on a real Kafka broker:
a processor that dies after storing a step and before its transaction commits leaves the
step in storage only; the next owner produces it from the outbox, once."""

from __future__ import annotations

import asyncio

import pytest

from channels.broker import MemoryBroker
from channels.store import Batch, MemoryStore
from feeds.books_runner import BooksRunner
from feeds.kafka_feed import TopicNames, ensure_topics
from tests.faults.topic import check_topic, read_topic
from tests.integration.test_kafka_books import (
    WAIT_S,
    config,
    match_day,
    new_group,
    running,
    send_all,
    wait_for,
)

pytestmark = pytest.mark.integration


class Crash(Exception):
    """The processor died here."""


class CrashingStore(MemoryStore):
    """Stores its ``crash_at``-th write, then fails it: as if the processor died right
    after storage took the step, before the step reached the ``deltas`` topic."""

    def __init__(self, crash_at: int):
        super().__init__(history_size=100_000)
        self.crash_at = crash_at
        self.writes = 0

    async def write(self, batch: Batch) -> None:
        await super().write(batch)
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash(f"died after write {self.writes}")


async def test_a_step_stored_but_not_produced_is_produced_by_the_next_owner(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 2, topics=topics)
    messages = match_day(seed=9, count=3_000)
    await send_all(kafka_bootstrap, topics, messages)
    store = CrashingStore(crash_at=6)
    settings = config(
        topics,
        new_group(),
        max_records=100,
        max_step_records=100,
        exactly_once=True,
        stale_after_s=None,
    )
    first = BooksRunner(kafka_bootstrap, store, MemoryBroker(), config=settings)
    with pytest.raises(Crash):
        async with asyncio.timeout(WAIT_S):
            await first.run()
    stored = [await store.offsets(t, p) for t in topics.feed for p in (0, 1)]
    applied = sum(o or 0 for o in stored)
    assert 0 < applied < len(messages)

    second = BooksRunner(kafka_bootstrap, store, MemoryBroker(), config=settings)
    async with running(second):
        await wait_for([second], lambda: second.stats.records >= len(messages) - applied)
    assert second.stats.reproduced > 0
    verdict = check_topic(await read_topic(kafka_bootstrap, topics.deltas, read_committed=True))
    assert verdict.failures() == [], verdict.details
    assert verdict.messages == first.stats.deltas + second.stats.deltas + second.stats.reproduced
