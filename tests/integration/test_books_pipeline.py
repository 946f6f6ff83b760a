"""The book processor applies a step while the previous one is still being stored.
Storage that loses its data at that moment (Redis restarted empty) is the one case where
the two interact: the rebase stores every book, the step already applied included,
under new epochs, and that step must then not store its own old-epoch snapshots over
them. Checked against a real Kafka broker, with a store that forgets everything once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from channels.broker import MemoryBroker
from channels.store import Batch, MarketSummary, MemoryStore, StoreError
from feeds.books_runner import BooksRunner
from feeds.kafka_feed import TopicNames, ensure_topics
from protocol import EventState, Snapshot
from tests.integration.test_kafka_books import (
    config,
    match_day,
    new_group,
    reference,
    running,
    send_all,
    wait_for,
    without_epoch,
)

pytestmark = pytest.mark.integration


class ForgetfulStore:
    """A :class:`MemoryStore` that is slow to write (so steps overlap) and, at its
    ``forget_at``-th write, loses everything it held and fails that write."""

    def __init__(self, forget_at: int):
        self.inner = MemoryStore(history_size=100_000)
        self.forget_at = forget_at
        self.writes = 0
        self.epochs: dict[str, list[str]] = {}
        """Per market, every epoch written, in order."""
        self.reverted: list[str] = []
        """Writes of a snapshot in an epoch a later one had replaced."""

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        await asyncio.sleep(0.01)  # Slow storage: the next step is applied meanwhile.
        if self.writes == self.forget_at:
            self.inner = MemoryStore(history_size=100_000)
            raise StoreError("restarted without its data")
        for market_id, snap in batch.snapshots.items():
            epochs = self.epochs.setdefault(market_id, [])
            if snap.epoch in epochs[:-1]:
                self.reverted.append(f"{market_id}: {snap.epoch} after {epochs[-1]}")
            if not epochs or epochs[-1] != snap.epoch:
                epochs.append(snap.epoch)
        await self.inner.write(batch)

    async def claim(self, partition: int) -> int:
        return await self.inner.claim(partition)

    async def outbox(self, partition: int) -> list[bytes]:
        return await self.inner.outbox(partition)

    async def snapshot(self, market_id: str) -> Snapshot | None:
        return await self.inner.snapshot(market_id)

    async def snapshots(self, market_ids: Iterable[str]) -> list[Snapshot]:
        return await self.inner.snapshots(market_ids)

    async def history(self, market_id: str, epoch: str, after_seq: int) -> list[bytes] | None:
        return await self.inner.history(market_id, epoch, after_seq)

    async def event(self, event_id: str) -> EventState | None:
        return await self.inner.event(event_id)

    async def events(self, sport: str | None = None) -> list[EventState]:
        return await self.inner.events(sport)

    async def market_ids(self, event_id: str) -> list[str]:
        return await self.inner.market_ids(event_id)

    async def lobby(self, sport: str) -> list[str]:
        return await self.inner.lobby(sport)

    async def summaries(self, event_id: str | None = None) -> list[MarketSummary]:
        return await self.inner.summaries(event_id)

    async def offsets(self, topic: str, partition: int) -> int | None:
        return await self.inner.offsets(topic, partition)

    async def load_partition(self, partition: int) -> tuple[list[Snapshot], list[EventState]]:
        return await self.inner.load_partition(partition)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_rebase_while_a_step_is_stored_is_not_overwritten_by_the_next_step(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 2, topics=topics)
    messages = match_day(seed=9, count=3_000)
    await send_all(kafka_bootstrap, topics, messages)
    expected = reference(messages)

    store = ForgetfulStore(forget_at=6)
    small = config(topics, new_group(), max_records=100, max_step_records=100)
    runner = BooksRunner(kafka_bootstrap, store, MemoryBroker(), config=small)
    async with running(runner):
        await wait_for([runner], lambda: runner.stats.records >= len(messages))

    assert runner.stats.rebases == 1
    assert store.reverted == []
    assert any(len(e) == 2 for e in store.epochs.values()), "the rebase wrote new epochs"
    books = runner.processor.books.markets
    stored = {s.market_id: s for s in await store.inner.snapshots(sorted(books))}
    assert sorted(stored) == sorted(expected.books.markets)
    for market_id, book in books.items():
        # Exactly the book in memory, epoch included: no step stored an old epoch over
        # the rebase, and every step after it was stored.
        assert stored[market_id] == book.snapshot, market_id
        assert without_epoch(book.snapshot) == without_epoch(
            expected.books.markets[market_id].snapshot
        )
