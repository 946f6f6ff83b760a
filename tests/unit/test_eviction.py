"""Processor eviction (feeds/eviction.py): settled markets and ended events are forgotten
after the retention, and a late message restores them from storage with the same outcome
as if they had never been forgotten."""

from __future__ import annotations

import itertools

import pytest

from channels.store import MemoryStore
from feeds.embedded import epoch_minter
from feeds.eviction import Retention, recall
from feeds.model import FeedMarket, FeedMessage, FeedResult, encode_feed, topic_of
from feeds.processor import FeedRecord, Processor, Step
from feeds.synthetic import MatchDay
from protocol import FINAL_MARKET_STATES


def test_retention_forgets_after_the_window_and_a_change_restarts_the_clock() -> None:
    retention = Retention(10.0)
    retention.market("m1", True, 0.0)
    retention.market("m2", True, 5.0)
    retention.market("m3", False, 5.0)  # Not final: never due.
    retention.event("e1", True, 1.0)
    assert retention.due(9.9) == ([], [])
    assert retention.due(10.0) == (["m1"], [])
    retention.market("m2", False, 12.0)  # Rolled back: no longer final.
    retention.market("m2", True, 20.0)  # Settled again: the clock starts again.
    assert retention.due(29.0) == ([], ["e1"])
    assert retention.due(30.0) == (["m2"], [])
    assert len(retention) == 0
    with pytest.raises(ValueError, match="retention_s"):
        Retention(0)


def _records(messages: list[FeedMessage]) -> list[tuple[float, FeedRecord]]:
    """Each message as a record, with its arrival time (its feed ts, in seconds)."""
    offsets: dict[str, int] = {}
    out = []
    for message in messages:
        topic = topic_of(message)
        offset = offsets[topic] = offsets.get(topic, -1) + 1
        out.append((message.ts / 1000, FeedRecord(topic, 0, offset, encode_feed(message))))
    return out


async def _run_forgetting(
    processor: Processor, store: MemoryStore, chunk: list[FeedRecord], now: float
) -> Step:
    step = processor.process(chunk, now=now)
    while (lookup := step.lookup) is not None:
        processor.recover(await recall(store, lookup, processor.books.markets), now)
        step = processor.process(chunk[lookup.resume :], now=now, step=step)
    store.write_now(step.batch)
    processor.evict(now)
    return step


async def test_a_forgetting_processor_gives_the_same_steps_as_one_that_never_forgets() -> None:
    day = list(itertools.islice(MatchDay(seed=3, events=4, odds_interval_ms=20_000), 6000))
    settled = [m for m in day if isinstance(m, FeedResult) and not m.rollback]
    assert len(settled) > 20
    last_ts = day[-1].ts
    # Late messages, long after the retention: a rollback of the first settled markets
    # (of ended events by now), a second result of another, a stray price.
    late: list[FeedMessage] = [
        FeedResult(m.event_id, m.market_id, last_ts + 1 + i, rollback=True)
        for i, m in enumerate(settled[:3])
    ]
    late.append(settled[5])
    late.append(FeedResult(settled[0].event_id, settled[0].market_id, last_ts + 50, rollback=True))
    late.append(settled[0])  # Settled again after its rollback.
    stream = _records([*day, *late])

    never = Processor(epoch_minter(lambda: 0))
    forgets = Processor(epoch_minter(lambda: 0), retention_s=30.0)
    store = MemoryStore()
    peak = 0
    for i in range(0, len(stream), 40):
        chunk = stream[i : i + 40]
        now = chunk[-1][0]
        records = [r for _, r in chunk]
        expected = never.process(records, now=now)
        got = await _run_forgetting(forgets, store, records, now)
        assert got.publications == expected.publications
        assert got.deltas == expected.deltas
        assert [d.reason for d in got.dead_letters] == [d.reason for d in expected.dead_letters]
        assert got.batch.offsets == expected.batch.offsets
        peak = max(peak, len(forgets.books.markets))
    assert len(forgets.books.markets) < len(never.books.markets) / 2
    assert peak < len(never.books.markets)
    # The late messages restored their markets: same book, seq and epoch as never forgotten.
    for market_id in {m.market_id for m in late if isinstance(m, FeedResult)}:
        assert forgets.books.markets[market_id].snapshot == never.books.markets[market_id].snapshot
    rolled = never.books.markets[settled[1].market_id].snapshot
    assert rolled.status not in FINAL_MARKET_STATES


async def test_a_forgotten_market_that_storage_lost_is_unknown_from_then_on() -> None:
    day = list(itertools.islice(MatchDay(seed=3, events=4, odds_interval_ms=20_000), 600))
    definition = next(m for m in day if isinstance(m, FeedMarket))
    result = FeedResult(definition.event_id, definition.market_id, definition.ts + 1, void=True)
    processor = Processor(epoch_minter(lambda: 0), retention_s=1.0)
    store = MemoryStore()
    first = [definition, result]
    for now, record in _records(first):
        await _run_forgetting(processor, store, [record], now)
    processor.evict(definition.ts / 1000 + 10)
    assert definition.market_id not in processor.books.markets
    lost = MemoryStore()  # Storage restarted empty.
    later = definition.ts / 1000 + 20
    rollback = FeedResult(definition.event_id, definition.market_id, result.ts + 1, rollback=True)
    records = [r for _, r in _records([*first, rollback, definition])][2:]
    step = await _run_forgetting(processor, lost, records, later)
    assert [d.reason.split(":")[0] for d in step.dead_letters] == ["unknown_market"]
    assert processor.books.markets[definition.market_id].snapshot.seq == 1
