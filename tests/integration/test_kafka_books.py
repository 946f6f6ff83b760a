"""The book processor over a real Kafka broker: feed producer -> feed topics ->
BooksRunner -> store, pub/sub and the ``deltas`` / ``deadletter`` topics.

Every test uses its own topic prefix and consumer group, so tests sharing a broker do
not see each other; the topics are deleted afterwards. The books a runner leaves in the
store are compared with those of a pure :class:`Processor` fed the same messages
directly (epochs aside: they are minted per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from itertools import islice
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import protocol
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from feeds.books_runner import BooksConfig, BooksRunner
from feeds.embedded import epoch_minter
from feeds.kafka_feed import (
    KafkaFeedProducer,
    TopicLayoutError,
    TopicNames,
    ensure_topics,
    partition_counts,
    produce,
)
from feeds.merge import CrossTopicMerge, MergeItem
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    FeedSelection,
    encode_feed,
    topic_of,
)
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay
from protocol import Delta, Snapshot

pytestmark = pytest.mark.integration

WAIT_S = 20.0


# -- fixtures and helpers ---------------------------------------------------------


def config(topics: TopicNames, group: str, **overrides: Any) -> BooksConfig:
    settings: dict[str, Any] = {
        "group_id": group,
        "client_id": f"books-{uuid.uuid4().hex[:6]}",
        "topics": topics,
        "heartbeat_interval_ms": 300,
        "session_timeout_ms": 6_000,
        "io_timeout_s": 10.0,
    }
    settings.update(overrides)
    return BooksConfig(**settings)


def new_group() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def running(*runners: BooksRunner) -> AsyncIterator[Callable[[BooksRunner], None]]:
    """Run ``runners`` (and any passed to the yielded ``start``) in owned tasks; stop
    them all, gracefully, on exit."""
    started: list[BooksRunner] = []
    async with asyncio.TaskGroup() as tasks:

        def start(runner: BooksRunner) -> None:
            started.append(runner)
            tasks.create_task(runner.run())

        for runner in runners:
            start(runner)
        try:
            yield start
        finally:
            async with asyncio.timeout(WAIT_S):
                for runner in started:
                    await runner.stop()


async def wait_for(runners: Sequence[BooksRunner], predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate`` holds, re-checking after every step or rebalance of any
    of ``runners`` (their ``observers``); fail if one of them ends first."""
    moved = asyncio.Event()
    for runner in runners:
        runner.observers.append(moved.set)
    try:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                ended = [r for r in runners if r.ended]
                assert not ended, f"a runner ended first: {ended[0].stats.line()}"
                moved.clear()
                await moved.wait()
    finally:
        for runner in runners:
            runner.observers.remove(moved.set)


async def send_all(bootstrap: str, topics: TopicNames, messages: Sequence[FeedMessage]) -> None:
    async with KafkaFeedProducer(bootstrap, topics=topics) as producer:
        assert await produce(messages, producer) == len(messages)


def reference(records: Sequence[FeedRecord | FeedMessage]) -> Processor:
    """A pure processor fed the same records, in send order, in one step."""
    processor = Processor(epoch_minter())
    as_records = [
        r
        if isinstance(r, FeedRecord)
        else FeedRecord(topic_of(r), 0, i, encode_feed(r), r.event_id.encode())
        for i, r in enumerate(records)
    ]
    processor.process(as_records)
    return processor


def without_epoch(snapshot: Snapshot) -> Snapshot:
    return msgspec.structs.replace(snapshot, epoch="")


async def assert_same_books(store: MemoryStore, expected: Processor) -> None:
    stored = {
        s.market_id: s for s in await store.snapshots(s.market_id for s in await store.summaries())
    }
    wanted = {m: book.snapshot for m, book in expected.books.markets.items()}
    assert sorted(stored) == sorted(wanted)
    for market_id, snapshot in wanted.items():
        assert without_epoch(stored[market_id]) == without_epoch(snapshot), market_id
    for event_id, event in expected.books.events.items():
        assert await store.event(event_id) == event


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, per partition in offset order (no consumer group)."""
    counts = await partition_counts(bootstrap, timeout_s=WAIT_S)
    consumer: Any = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    out: list[Any] = []
    async with asyncio.timeout(WAIT_S):
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(counts[topic])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends: dict[Any, int] = await consumer.end_offsets(tps)
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1_000)
                    out.extend(batch.get(tp, ()))
        finally:
            await consumer.stop()
    return out


async def assert_deltas_topic(bootstrap: str, topics: TopicNames, store: MemoryStore) -> None:
    """The ``deltas`` topic holds, per market, seq 1, 2, ... n exactly once and in order
    (n the stored seq), in one epoch, and replaying it rebuilds the stored book."""
    streams: dict[str, list[Snapshot | Delta]] = {}
    for record in await read_topic(bootstrap, topics.deltas):
        message = protocol.decode_server(record.value)
        assert isinstance(message, Snapshot | Delta)
        assert record.key == message.market_id.encode()
        streams.setdefault(message.market_id, []).append(message)
    summaries = await store.summaries()
    assert sorted(streams) == sorted(s.market_id for s in summaries)
    for summary in summaries:
        stream = streams[summary.market_id]
        assert [m.seq for m in stream] == list(range(1, summary.seq + 1)), summary.market_id
        assert {m.epoch for m in stream} == {summary.epoch}
        first = stream[0]
        assert isinstance(first, Snapshot)
        book = first
        for delta in stream[1:]:
            assert isinstance(delta, Delta)
            book = protocol.apply(book, delta)
        assert book == await store.snapshot(summary.market_id)


def match_day(seed: int, count: int) -> list[FeedMessage]:
    """A synthetic match day long enough to settle markets (every feed message kind)."""
    messages = list(islice(MatchDay(seed=seed, events=8), count))
    kinds = {type(m) for m in messages}
    assert kinds == {FeedEvent, FeedMarket, FeedMarketStatus, FeedOdds, FeedResult}
    return messages


# -- tests ------------------------------------------------------------------------


async def test_books_and_deltas_match_a_pure_processor(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 3, topics=topics)
    messages = match_day(seed=3, count=4_000)
    await send_all(kafka_bootstrap, topics, messages)
    expected = reference(messages)

    store, broker = MemoryStore(history_size=10_000), MemoryBroker()
    runner = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, new_group()))
    async with running(runner):
        await wait_for([runner], lambda: runner.stats.records >= len(messages))

    assert runner.stats.records == len(messages)
    assert runner.stats.dead_letters == 0
    assert runner.stats.partitions == frozenset()  # Left the group on stop.
    await assert_same_books(store, expected)
    await assert_deltas_topic(kafka_bootstrap, topics, store)
    assert broker.published == runner.stats.publications > 0
    assert await read_topic(kafka_bootstrap, topics.deadletter) == []


async def test_malformed_records_are_dead_lettered_and_the_feed_goes_on(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 2, topics=topics)
    selections = (
        FeedSelection("h", "Home", Decimal("2.10")),
        FeedSelection("a", "Away", Decimal("1.80")),
    )
    good_before: list[FeedMessage] = [
        FeedEvent("e1", 1, "football", "League", "A", "B", 100),
        FeedMarket("e1", "m1", 2, "football", "1x2", "Match result", selections, main=True),
        FeedOdds("e1", "m1", 3, (FeedPrice("h", Decimal("2.20")),)),
    ]
    unknown_market = encode_feed(FeedOdds("e1", "nope", 4, (FeedPrice("h", Decimal("3")),)))
    bad = [b"{not json", b'{"kind": "bogus", "event_id": "e1", "ts": 5}', unknown_market]
    good_after: list[FeedMessage] = [
        FeedMarketStatus("e1", "m1", 6, "suspended", "goal"),
        FeedOdds("e1", "m1", 7, (FeedPrice("a", Decimal("1.75")),)),
        FeedMarketStatus("e1", "m1", 8, "open"),
        FeedMarketStatus("e1", "m1", 9, "closed"),
        FeedResult("e1", "m1", 10, (("h", "winner"),)),
    ]
    sent: list[FeedRecord | FeedMessage] = [*good_before]
    async with KafkaFeedProducer(kafka_bootstrap, topics=topics) as producer:
        for message in good_before:
            await producer.send(message)
        for topic in topics.feed:
            for value in bad:
                await producer.send_raw(topic, b"e1", value)
                sent.append(FeedRecord(topic, 0, len(sent), value, b"e1"))
        for message in good_after:
            await producer.send(message)
    sent.extend(good_after)
    expected = reference(sent)
    total = len(good_before) + len(good_after) + 3 * len(bad)

    store = MemoryStore()
    runner = BooksRunner(kafka_bootstrap, store, MemoryBroker(), config=config(topics, new_group()))
    async with running(runner):
        await wait_for([runner], lambda: runner.stats.records >= total)

    assert runner.stats.dead_letters == 3 * len(bad)
    await assert_same_books(store, expected)
    settled = await store.snapshot("m1")
    assert settled is not None and settled.status == "settled"

    originals = {
        (r.topic, r.partition, r.offset): r
        for topic in topics.feed
        for r in await read_topic(kafka_bootstrap, topic)
    }
    letters = await read_topic(kafka_bootstrap, topics.deadletter)
    assert len(letters) == 3 * len(bad)
    seen: dict[str, list[str]] = {}
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        source = originals[(headers["topic"], int(headers["partition"]), int(headers["offset"]))]
        assert (letter.key, letter.value) == (source.key, source.value)
        seen.setdefault(headers["topic"], []).append(headers["reason"].split(":")[0])
    assert {t: sorted(r) for t, r in seen.items()} == {
        t: ["malformed", "malformed", "unknown_market"] for t in topics.feed
    }


async def test_a_new_runner_restores_from_the_store_and_continues_each_seq(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 3, topics=topics)
    messages = match_day(seed=5, count=4_000)
    first, second = messages[:2_500], messages[2_500:]
    await send_all(kafka_bootstrap, topics, first)
    store, broker, group = MemoryStore(history_size=10_000), MemoryBroker(), new_group()

    # Small steps, stopped part-way: some fetched records are never applied by runner 1.
    small = config(topics, group, max_records=100, max_step_records=100)
    runner1 = BooksRunner(kafka_bootstrap, store, broker, config=small)
    async with running(runner1):
        await wait_for([runner1], lambda: runner1.stats.records >= 1_000)
    assert runner1.stats.records < len(first)
    epochs = {s.market_id: s.epoch for s in await store.summaries()}

    await send_all(kafka_bootstrap, topics, second)
    runner2 = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, group))
    async with running(runner2):
        await wait_for(
            [runner2], lambda: runner1.stats.records + runner2.stats.records >= len(messages)
        )

    assert runner1.stats.records + runner2.stats.records == len(messages)
    assert runner2.stats.restored_markets == len(epochs) > 0
    await assert_same_books(store, reference(messages))
    for summary in await store.summaries():
        assert summary.epoch == epochs.get(summary.market_id, summary.epoch)
    await assert_deltas_topic(kafka_bootstrap, topics, store)


async def test_two_runners_share_the_partitions_of_one_group(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 4, topics=topics)
    messages = list(islice(MatchDay(seed=11, events=16), 6_000))
    first, second = messages[:3_000], messages[3_000:]
    await send_all(kafka_bootstrap, topics, first)
    store, broker, group = MemoryStore(history_size=10_000), MemoryBroker(), new_group()

    a = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, group))
    b = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, group))
    async with running(a):
        await wait_for([a], lambda: a.stats.records >= len(first))
        assert a.stats.partitions == {0, 1, 2, 3}
        async with running(b):
            # B joins: A hands two partitions over (B restores them from the store).
            await wait_for(
                [a, b], lambda: bool(b.stats.partitions) and len(a.stats.partitions) == 2
            )
            assert a.stats.partitions | b.stats.partitions == {0, 1, 2, 3}
            await send_all(kafka_bootstrap, topics, second)
            await wait_for([a, b], lambda: a.stats.records + b.stats.records >= len(messages))

    assert a.stats.records + b.stats.records == len(messages)
    assert b.stats.records > 0 and b.stats.restored_markets > 0
    assert a.stats.dead_letters == b.stats.dead_letters == 0
    await assert_same_books(store, reference(messages))
    await assert_deltas_topic(kafka_bootstrap, topics, store)


async def test_a_live_feed_is_handed_over_between_runners_mid_stream(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    """One producer streams while B joins (A hands half the partitions over) and then A
    leaves (B takes them all): every hand-over restores mid-stream, and order across
    the feed topics holds throughout."""
    await ensure_topics(kafka_bootstrap, 4, topics=topics)
    messages = list(islice(MatchDay(seed=21, events=16), 6_000))
    store, broker, group = MemoryStore(history_size=10_000), MemoryBroker(), new_group()
    a = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, group))
    b = BooksRunner(kafka_bootstrap, store, broker, config=config(topics, group))

    async with (
        KafkaFeedProducer(kafka_bootstrap, topics=topics) as producer,
        running() as start,
    ):
        feed = asyncio.create_task(produce(messages, producer, rate=4_000))
        try:
            start(a)
            await wait_for([a], lambda: a.stats.records >= 1_000)
            start(b)
            await wait_for([a, b], lambda: bool(b.stats.partitions))
            await wait_for([a, b], lambda: a.stats.records + b.stats.records >= 3_000)
            async with asyncio.timeout(WAIT_S):
                await a.stop()  # A leaves: B takes every partition.
            await wait_for([b], lambda: len(b.stats.partitions) == 4)
            async with asyncio.timeout(WAIT_S):
                assert await feed == len(messages)
            await wait_for([b], lambda: a.stats.records + b.stats.records >= len(messages))
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)

    assert a.stats.records + b.stats.records == len(messages)
    assert a.stats.dead_letters == b.stats.dead_letters == 0
    assert b.stats.rebalances >= 2 and b.stats.restored_markets > 0
    await assert_same_books(store, reference(messages))
    await assert_deltas_topic(kafka_bootstrap, topics, store)


async def test_feed_topics_with_another_partition_count_are_refused(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    await ensure_topics(kafka_bootstrap, 2, topics=topics)
    await ensure_topics(kafka_bootstrap, 2, topics=topics)  # Idempotent.
    with pytest.raises(TopicLayoutError, match="must all have 3 partitions"):
        await ensure_topics(kafka_bootstrap, 3, topics=topics)


# -- the cross-topic merge, without Kafka -------------------------------------------

MARKETS, ODDS, RESULTS = "markets", "odds", "results"
RANK = {MARKETS: 0, ODDS: 1, RESULTS: 2}


def item(
    topic: str, offset: int, seq: int, ts: int = 0, producer: bytes | None = b"p"
) -> MergeItem:
    record = FeedRecord(topic, 0, offset, b"%s-%d" % (topic.encode(), seq), b"e")
    return MergeItem(record, (ts, seq, RANK[topic]), producer, seq)


def seqs(records: Sequence[FeedRecord]) -> list[str]:
    return [r.value.decode() for r in records]


def new_merge() -> CrossTopicMerge:
    merge = CrossTopicMerge([MARKETS, ODDS, RESULTS], max_hold_s=1.0)
    for topic in RANK:
        merge.expect((topic, 0), 0)
    return merge


def test_merge_restores_a_producers_send_order_across_topics() -> None:
    merge = new_merge()
    # Sent: definition (1), price (2), close (3), price (4)... fetched odds first.
    merge.add((ODDS, 0), [item(ODDS, 0, 2), item(ODDS, 1, 4)])
    assert seqs(merge.release((), now=0.0, limit=100)) == []  # 1 not yet seen.
    merge.add((MARKETS, 0), [item(MARKETS, 0, 1), item(MARKETS, 1, 3)])
    released = merge.release((), now=0.1, limit=100)
    assert seqs(released) == ["markets-1", "odds-2", "markets-3", "odds-4"]
    # The next number is known now: 6 waits for 5 however long it takes to fetch...
    merge.add((ODDS, 0), [item(ODDS, 2, 6)])
    assert merge.release((), now=5.0, limit=100) == []
    merge.add((RESULTS, 0), [item(RESULTS, 0, 5)])
    assert seqs(merge.release((), now=5.1, limit=100)) == ["results-5", "odds-6"]
    assert merge.forced == 0


def test_merge_gives_up_on_a_missing_record_after_the_deadline() -> None:
    merge = new_merge()
    merge.add((MARKETS, 0), [item(MARKETS, 0, 1)])
    assert seqs(merge.release((), now=0.0, limit=100)) == ["markets-1"]
    merge.add((ODDS, 0), [item(ODDS, 0, 3)])  # 2 never comes.
    assert merge.release((), now=10.0, limit=100) == []
    assert merge.release((), now=10.9, limit=100) == []
    assert seqs(merge.release((), now=11.0, limit=100)) == ["odds-3"]
    assert merge.forced == 1
    merge.add((RESULTS, 0), [item(RESULTS, 0, 2)])  # Late: applied at once.
    assert seqs(merge.release((), now=11.1, limit=100)) == ["results-2"]


def test_merge_falls_back_to_the_watermark_in_mid_stream() -> None:
    # After a restore the producer's next number is unknown (its stream started long ago).
    merge = new_merge()
    merge.add((ODDS, 0), [item(ODDS, 0, 41, ts=100)])
    # markets and results may still deliver something earlier: hold.
    assert merge.release((), now=0.0, limit=100) == []
    merge.add((MARKETS, 0), [item(MARKETS, 0, 42, ts=100), item(MARKETS, 1, 43, ts=100)])
    assert merge.release((), now=0.0, limit=100) == []  # results still unknown.
    released = merge.release({(RESULTS, 0)}, now=0.0, limit=100)  # results caught up.
    # Same millisecond: the sequence number decides (not markets-first).
    assert seqs(released) == ["odds-41", "markets-42", "markets-43"]
    # Records without the header: by timestamp, markets first on a tie.
    merge.add((ODDS, 0), [item(ODDS, 1, 0, ts=200, producer=None)])
    merge.add((MARKETS, 0), [item(MARKETS, 2, 0, ts=200, producer=None)])
    released = merge.release({(RESULTS, 0)}, now=0.0, limit=100)
    assert seqs(released) == ["markets-0"]  # markets may send another at ts 200...
    released = merge.release({(MARKETS, 0), (RESULTS, 0)}, now=0.0, limit=100)
    assert seqs(released) == ["odds-0"]  # ...until it is caught up.
