"""``oddstream books``: the book processor over Kafka.

A :class:`BooksRunner` is one member of a Kafka consumer group over the co-partitioned
feed topics. It owns the books of the partition numbers the group assigns it, and per
step: merges the fetched records across topics (:class:`CrossTopicMerge`), applies them
with the pure :class:`~feeds.processor.Processor`, and performs the step's I/O in the
order that makes a crash at any point safe:

1. dead letters to the ``deadletter`` topic, acknowledged;
2. :func:`~feeds.processor.commit_step`: storage (snapshots, history and the offsets
   they reflect, atomically), then pub/sub;
3. deltas to the ``deltas`` topic keyed by ``market_id``, acknowledged;
4. the Kafka commit of the step's offsets.

The store, not Kafka's committed offsets, is the authority on where a partition's books
stand: on assignment the runner restores the books from the store and seeks to the
offsets stored with them, so each market's ``seq`` continues with no gap and no reuse.
Kafka's committed offsets trail the store and serve lag monitoring and tooling.

Crash windows: a crash after (1) and before (2) replays the step, so its dead letters may
be written twice (at least once). A crash after (2) and before (3) is acknowledged loses
that step's messages on the ``deltas`` topic (at most once there), since the store
already says they were applied; gateways are unaffected (they read the store). Closing
that window needs the store to keep a step's deltas until they are acknowledged (an
outbox the next owner re-sends).

Pipelining: a step's I/O runs in a task while the loop fetches, merges and applies the
next records; the next step's I/O starts once this one is stored, and its ``deltas``
and commit once this one's are done. So the phases above still happen one step at a
time and in step order, and each step's order (1) to (4) is as stated; at most two
steps are in flight, and a rebalance, a staleness tick, a store check or a stop waits
for both first (see :meth:`BooksRunner._step`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from channels.broker import BrokerError
from channels.store import Store, StoreError
from feeds.embedded import epoch_minter, now_ms, tick_interval
from feeds.kafka_feed import (
    DEFAULT_TOPICS,
    ORDER_HEADER,
    DeliveryError,
    TopicLayoutError,
    TopicNames,
    feed_partitions,
    kafka_partition,
    new_producer,
)
from feeds.processor import DeadLetter, FeedRecord, Processor, Publisher, Step, commit_step
from feeds.staleness import STALE_AFTER_S

log = logging.getLogger(__name__)

TP = tuple[str, int]
"""(topic, partition)."""
MergeKey = tuple[int, int, int]
"""(record timestamp ms, producer sequence or 0, topic rank): the watermark order."""


# ---------------------------------------------------------------------------
# Cross-topic merge (sans-I/O)
# ---------------------------------------------------------------------------


class MergeItem(msgspec.Struct, frozen=True, gc=False):
    """One fetched record with what the merge orders it by."""

    record: FeedRecord
    key: MergeKey
    producer: bytes | None
    seq: int


class _Queue:
    __slots__ = ("items", "last_key", "next_offset", "tp")

    def __init__(self, tp: TP, next_offset: int | None):
        self.tp = tp
        self.items: deque[MergeItem] = deque()
        self.last_key: MergeKey | None = None
        self.next_offset = next_offset


class CrossTopicMerge:
    """Puts the records of the feed topics of each partition number back in send order.

    Kafka orders records within one partition only. ``markets``, ``odds`` and
    ``results`` are separate partitions, written and fetched independently: a full
    ``odds`` batch is sent before a lingering ``markets`` batch, and a fetch can return
    a market's prices before the definition sent just before them, or a price after the
    close that followed it. An event's messages share a partition number on every feed
    topic, so order matters only among the (three) queues of one partition number, and
    this merge restores it there. Each queue stays in offset order; the queues are merged
    by, in turn:

    1. **The producer's sequence.** :class:`~feeds.kafka_feed.KafkaFeedProducer` numbers
       the records it sends to each partition number (``oddstream-order`` header). Once
       the merge knows the next number of a producer, it releases exactly that record
       next (and holds a later one until the gap is filled). A producer's number 1 is
       always next, so a feed written by producers started while this runner tails the
       topics is applied in exactly the order it was sent.
    2. **A watermark**, for a record whose producer's next number is not known (the
       first record after a restore or a hand-over, in mid-stream) or that has no header
       (another producer): by (record timestamp, sequence number, topic rank: ``markets``
       first), and only when no other queue of the partition number can still deliver
       an earlier record: each holds a record, has reached the high watermark of its
       last fetch, or already delivered a later key. That is reliable for a backlog
       (what was written before the restore); for records still in flight from the
       producer it is a best effort.
    3. **A deadline**: when a partition number has been stuck for ``max_hold_s`` (nothing
       releasable), its earliest record is released anyway, so a missing record (a
       producer that died between two sends, a topic that stalls) delays its partition
       number but never stops it. Counted in :attr:`forced`; a record of a producer that
       arrives after its successors were forced out is applied as soon as it arrives.

    Limits: an event fed by two producers is ordered between them by their clocks only;
    records of different events are interleaved but never reordered within a queue.
    Records below a queue's ``next_offset`` (already applied, or fetched again after a
    seek) are dropped on entry.
    """

    def __init__(self, topics: Sequence[str], max_hold_s: float):
        self._rank = {t: i for i, t in enumerate(topics)}
        self._max_hold_s = max_hold_s
        self._queues: dict[TP, _Queue] = {}
        self._by_partition: dict[int, list[_Queue]] = {}
        self._next: dict[int, dict[bytes, int]] = {}
        """Per partition number: the next sequence number of each producer."""
        self._blocked_since: dict[int, float] = {}
        self.forced = 0
        """Records released by the deadline rather than by order."""

    def rank(self, topic: str) -> int | None:
        return self._rank.get(topic)

    def expect(self, tp: TP, next_offset: int | None) -> None:
        """(Re)start a queue empty, dropping records below ``next_offset`` from now on."""
        queue = _Queue(tp, next_offset)
        old = self._queues.get(tp)
        self._queues[tp] = queue
        queues = self._by_partition.setdefault(tp[1], [])
        if old is not None:
            queues.remove(old)
        queues.append(queue)

    def clear(self) -> None:
        """Drop every queue (partitions revoked). The producers' sequence numbers are
        kept: they stay valid for partitions whose books are kept."""
        self._queues.clear()
        self._by_partition.clear()
        self._blocked_since.clear()

    def forget(self, partition: int) -> None:
        """Forget the producers' sequence numbers of a partition number (its books were
        dropped or restored from the store)."""
        self._next.pop(partition, None)

    def add(self, tp: TP, items: Iterable[MergeItem]) -> None:
        """Append fetched records of ``tp``, in offset order."""
        queue = self._queues.get(tp)
        if queue is None:
            self.expect(tp, None)
            queue = self._queues[tp]
        fresh = list(items)
        floor = queue.next_offset
        if floor is not None and fresh and fresh[0].record.offset < floor:
            fresh = [item for item in fresh if item.record.offset >= floor]
        if fresh:
            queue.items.extend(fresh)
            last = fresh[-1]
            queue.last_key = last.key
            queue.next_offset = last.record.offset + 1

    def pending(self, tp: TP) -> int:
        queue = self._queues.get(tp)
        return 0 if queue is None else len(queue.items)

    @property
    def held(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def tps(self) -> list[TP]:
        return list(self._queues)

    def release(self, caught_up: Container[TP], now: float, limit: int) -> list[FeedRecord]:
        """Records that may be applied now, in send order per partition number; at most
        ``limit`` (the rest stay queued). ``caught_up`` names the queues whose consumer
        position has reached the partition's high watermark."""
        out: list[FeedRecord] = []
        for partition, queues in self._by_partition.items():
            nexts = self._next.setdefault(partition, {})
            while len(out) < limit:
                heads = [q for q in queues if q.items]
                if not heads:
                    break
                if len(heads) > 1:
                    heads.sort(key=_head_key)
                chosen = self._choose(heads, queues, nexts, caught_up)
                if chosen is None:
                    # The deadline runs from when the partition number got stuck, not
                    # from when its records arrived: in a backlog they wait for
                    # throughput, which is no reason to give up on order.
                    since = self._blocked_since.setdefault(partition, now)
                    if now - since < self._max_hold_s:
                        break
                    chosen = heads[0]
                    self.forced += 1
                self._blocked_since.pop(partition, None)
                item = chosen.items.popleft()
                out.append(item.record)
                producer = item.producer
                if producer is None:
                    continue
                expected = nexts[producer] = max(nexts.get(producer, 0), item.seq + 1)
                # A run, without sorting and choosing again for each record: while the
                # chosen queue's next record is this producer's next number, and every
                # other head is a later record of the same producer (so none of them may
                # go first), _choose would pick the chosen queue again.
                bound = _run_bound(heads, chosen, producer)
                if bound <= expected:
                    continue
                items = chosen.items
                while items and len(out) < limit and expected < bound:
                    head = items[0]
                    if head.seq != expected or head.producer != producer:
                        break
                    out.append(items.popleft().record)
                    expected += 1
                nexts[producer] = expected
        return out

    @staticmethod
    def _choose(
        heads: Sequence[_Queue],
        queues: Sequence[_Queue],
        nexts: Mapping[bytes, int],
        caught_up: Container[TP],
    ) -> _Queue | None:
        watermark_ok: bool | None = None
        for queue in heads:
            item = queue.items[0]
            if item.producer is not None:
                expected = nexts.get(item.producer)
                if expected is not None:
                    if item.seq <= expected:
                        return queue  # Its turn (or late, after a deadline: apply it now).
                    continue  # An earlier record of this producer is still to come.
                if item.seq == 1:
                    return queue  # A new producer's first record.
            if watermark_ok is None:
                watermark_ok = _below_watermark(item.key, queues, caught_up)
            if watermark_ok:
                return queue
        return None


def _freeze_heap(stack: contextlib.ExitStack | contextlib.AsyncExitStack) -> None:
    """Move everything alive now (modules, clients: what a processor keeps for life) out
    of the garbage collector's sight until ``stack`` closes. A processor allocates
    tracked objects at a high rate (records, steps), so full collections come often,
    and each would otherwise scan that whole heap again (measured over a million
    records: 2.5 s of 19 s of CPU in full collections, 0.7 s with the heap frozen).
    Frozen objects are still freed by reference counting; only cycles among them are
    no longer collected (the import-time heap makes none worth speaking of)."""
    gc.collect()
    gc.freeze()
    stack.callback(gc.unfreeze)


def _head_key(queue: _Queue) -> MergeKey:
    return queue.items[0].key


def _run_bound(heads: Sequence[_Queue], chosen: _Queue, producer: bytes) -> int | float:
    """The lowest number among the other heads if all are records of ``producer`` (the
    chosen queue's records may run up to it); 0 if another head is not."""
    bound: int | float = math.inf
    for queue in heads:
        if queue is not chosen:
            head = queue.items[0]
            if head.producer != producer:
                return 0
            bound = min(bound, head.seq)
    return bound


def _below_watermark(key: MergeKey, queues: Sequence[_Queue], caught_up: Container[TP]) -> bool:
    # No empty queue that is still catching up may deliver a record ordered before key.
    for queue in queues:
        if queue.items or queue.tp in caught_up:
            continue
        if queue.last_key is None or not key < queue.last_key:
            return False
    return True


# ---------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BooksConfig:
    """Settings of one book processor. Every limit has a default that suits a small
    deployment; the CLI maps ``ODDSTREAM_*`` settings onto it."""

    group_id: str = "oddstream-books"
    """Kafka consumer group; processors sharing it share the partitions."""
    client_id: str = "oddstream-books"
    topics: TopicNames = DEFAULT_TOPICS
    max_records: int | None = None
    """Records taken per ``getmany``; ``None`` takes everything fetched, so no partition
    waits behind another's backlog (memory is bounded by ``max_pending``)."""
    max_step_records: int = 5_000
    """Records applied per step (one store write, one Kafka commit)."""
    poll_timeout_ms: int = 100
    """Longest wait for records; also bounds how late a stop request is noticed."""
    max_pending: int = 20_000
    """Records held back per partition before its fetching is paused."""
    max_hold_ms: int = 1_000
    """Longest a partition number waits for a record it needs from another feed topic
    before giving up on order (see :class:`CrossTopicMerge`)."""
    io_timeout_s: float = 120.0
    """Bound on each network phase: store, pub/sub, produce acks, Kafka commit, restore."""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    """How soon a member notices a rebalance (and hands partitions over)."""
    linger_ms: int = 5
    store_check_s: float = 2.0
    """How often an idle processor checks that storage still holds its books."""
    stale_after_s: float | None = STALE_AFTER_S
    """Longest silence of the feed about an event before its open markets are suspended
    with reason ``feed_stale`` (reopened when the feed speaks again); ``None``: never.
    See :mod:`feeds.staleness`."""


@dataclass(slots=True)
class BooksStats:
    """Counters of one runner, for the progress line and metrics."""

    records: int = 0
    """Feed records applied or dead-lettered (not counting skipped ones)."""
    skipped: int = 0
    """Records below the restored offsets (already applied by a previous owner)."""
    dead_letters: int = 0
    deltas: int = 0
    """Messages (first snapshots and deltas) produced to the ``deltas`` topic."""
    publications: int = 0
    steps: int = 0
    rebalances: int = 0
    commit_failures: int = 0
    restored_markets: int = 0
    forced_releases: int = 0
    """Records released out of order by the merge's deadline (should stay 0)."""
    held: int = 0
    """Records fetched but held back by the merge after the last step."""
    store_retries: int = 0
    """Store/publish attempts that failed and were retried."""
    rebases: int = 0
    """Times storage was found to have lost its data and every book was re-stored."""
    stale_suspensions: int = 0
    """Markets suspended because their event's feed went silent (``feed_stale``)."""
    partitions: frozenset[int] = frozenset()
    """Partition numbers owned now."""

    def line(self) -> str:
        return (
            f"records={self.records} deltas={self.deltas} dead_letters={self.dead_letters} "
            f"steps={self.steps} held={self.held} partitions={sorted(self.partitions)} "
            f"rebalances={self.rebalances} skipped={self.skipped} "
            f"forced={self.forced_releases} commit_failures={self.commit_failures} "
            f"store_retries={self.store_retries} rebases={self.rebases} "
            f"stale_suspensions={self.stale_suspensions}"
        )


class RunnerStopped(Exception):
    """The runner stopped (or failed) before the awaited condition held."""


class BooksRunner:
    """One book processor: Kafka feed topics in; store, pub/sub and ``deltas`` out.

    Run it with :meth:`run` (in a task the caller owns) and end it with :meth:`stop`,
    which finishes and commits the step in progress and leaves the group, so the
    partitions move to another member at once. ``processor`` defaults to a fresh
    :class:`Processor` minting epochs with :func:`~feeds.embedded.epoch_minter` and
    guarding staleness per ``config.stale_after_s``; the books it needs are restored
    from ``store``. ``clock`` (epoch ms) stamps the staleness suspensions, ``monotonic``
    (seconds) measures silences.

    On assignment, for each partition number: the books of its events are restored from
    the store (``load_partition``) and each feed topic's consumer is moved to the offset
    stored with them (``offsets``), which also becomes ``processor.skip_until``; with no
    stored offset it starts from the beginning of the topic. Partitions this member
    keeps across a rebalance keep their in-memory books when the store shows nobody
    else advanced them. On revocation the step in progress finishes and commits first;
    the books of partitions that went elsewhere are dropped at the next assignment.

    Errors: a store or broker failure is retried until storage answers (a processor
    rides out a Redis restart; if Redis lost its data, every book is re-stored under a
    new epoch). A Kafka failure inside a step, or a partition layout that breaks
    co-partitioning, ends :meth:`run` with that error (the next owner restores from the
    store). A failed Kafka commit (membership lost) is counted and logged; storage
    already holds the step.
    """

    def __init__(
        self,
        bootstrap: str,
        store: Store,
        broker: Publisher,
        *,
        config: BooksConfig | None = None,
        processor: Processor | None = None,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._bootstrap = bootstrap
        self._store = store
        self._broker = broker
        self._config = config = config or BooksConfig()
        self._topics = config.topics
        self._feed = config.topics.feed
        self.processor = processor or Processor(
            epoch_minter(clock), stale_after_s=config.stale_after_s
        )
        self._clock = clock
        self._monotonic = monotonic
        guard = self.processor.staleness
        self._tick_s = None if guard is None else tick_interval(guard.stale_after_s)
        self.stats = BooksStats()
        self._merge = CrossTopicMerge(self._feed, config.max_hold_ms / 1000)
        self._io_timeout = config.io_timeout_s
        # Serialises applying a step and starting its I/O (store -> publish -> produce
        # -> commit, see _step) with the rebalance callbacks, which aiokafka runs in its
        # coordinator task, and which settle the I/O in flight before going on.
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Task[None] | None = None
        """The I/O of the last step (store, publish, produce, commit), still running while
        the loop fetches, merges and applies the next records; see :meth:`_step`."""
        self._earlier: asyncio.Task[None] | None = None
        """The step before it, if still in flight (producing and committing)."""
        self._stored: asyncio.Event | None = None
        """Set once the last step in flight is stored."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Every step in flight (the last one and, in its Kafka phase, the one before)."""
        self._generation = 0
        """Rebases so far: a step applied before the last rebase is stored by it."""
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._failure: BaseException | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._owned: frozenset[int] = frozenset()
        """Partition numbers whose records are processed now (empty during a rebalance)."""
        self._held: set[int] = set()
        """Partition numbers whose books are in memory."""
        self._processed: dict[TP, int] = {}
        """Next offset per feed partition, as applied to the books (and stored)."""
        self._event_partition: dict[str, int] = {}
        self._paused: set[TP] = set()
        self._delta_partition_count = 0
        self._delta_keys: dict[str, tuple[bytes, int]] = {}
        self._backlog = False

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Join the group and process until :meth:`stop`. Raises
        :class:`~feeds.kafka_feed.TopicLayoutError` when the feed topics are missing or
        not co-partitioned, and whatever a step's I/O raised."""
        if self._started:
            raise RuntimeError("a BooksRunner runs once")
        self._started = True
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._open(stack)
                # On an error, the step in flight ends before the clients close.
                stack.push_async_callback(self._abandon)
                _freeze_heap(stack)
                checked = ticked = time.monotonic()
                while not self._stopping.is_set():
                    if self._failure is not None:
                        raise self._failure
                    if time.monotonic() - checked > self._config.store_check_s:
                        checked = time.monotonic()
                        await self.check_store()
                    # The last step's I/O runs on while the next records are fetched,
                    # merged and applied (see _step).
                    fetched = await self._fetch()
                    async with self._lock:
                        if self._inflight is not None and self._inflight.done():
                            await self._settle()  # Its error, if any, now.
                        self._buffer(fetched)
                        records = await self._release()
                        if records:
                            await self._step(records)
                        # After the step: an event heard in it is not stale.
                        now = self._monotonic()
                        if self._tick_s is not None and now - ticked >= self._tick_s:
                            ticked = now
                            await self._settle()
                            await self._tick(now)
                    await self._notify()
                async with self._lock:
                    await self._settle()
        except BaseException as exc:
            self._failure = self._failure or exc
            raise
        finally:
            self._owned = self.stats.partitions = frozenset()
            self._done.set()
            await self._notify()

    async def stop(self) -> None:
        """Finish the step in progress, commit, leave the group and return when
        :meth:`run` has ended (its error, if any, is raised by :meth:`run`)."""
        self._stopping.set()
        if self._started:
            await self._done.wait()

    async def wait_until(self, predicate: Callable[[BooksStats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; re-checked after every step and
        rebalance. Raises :class:`RunnerStopped` if the runner ends first. The caller
        bounds the wait (``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._done.is_set() or predicate(self.stats))
        if not predicate(self.stats):
            raise RunnerStopped(f"runner ended: {self._failure!r}")

    @property
    def owned_partitions(self) -> frozenset[int]:
        return self._owned

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        config = self._config
        await feed_partitions(self._bootstrap, topics=self._topics, timeout_s=self._io_timeout)
        producer = new_producer(
            self._bootstrap,
            client_id=f"{config.client_id}-out",
            linger_ms=config.linger_ms,
            request_timeout_ms=int(self._io_timeout * 1000),
        )
        async with asyncio.timeout(self._io_timeout):
            await producer.start()
        stack.push_async_callback(self._close_client, producer)
        self._producer = producer
        async with asyncio.timeout(self._io_timeout):
            self._delta_partition_count = len(await producer.partitions_for(self._topics.deltas))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=config.group_id,
            client_id=config.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Range assignment gives one member the same partition numbers of every
            # topic with the same partition count: the co-partitioning the books need.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            request_timeout_ms=int(self._io_timeout * 1000),
        )
        async with asyncio.timeout(self._io_timeout):
            await consumer.start()
        # Stopping the consumer commits nothing (auto-commit is off) and leaves the
        # group, so the partitions are reassigned without waiting for a session timeout.
        stack.push_async_callback(self._close_client, consumer)
        self._consumer = consumer
        consumer.subscribe(topics=list(self._feed), listener=_Listener(self))

    async def _close_client(self, client: Any) -> None:
        async with asyncio.timeout(self._io_timeout):
            await client.stop()

    # -- the loop ----------------------------------------------------------------

    async def _fetch(self) -> Mapping[Any, list[Any]]:
        # getmany waits without a bound while a rebalance is in progress; cancelling it
        # there loses nothing (records are handed over synchronously), so a deadline
        # here only means "nothing this time".
        # Do not wait for new records while held ones are ready (the last step was cut
        # at max_step_records).
        poll_ms = 0 if self._backlog else self._config.poll_timeout_ms
        try:
            async with asyncio.timeout(poll_ms / 1000 + 1.0):
                fetched: Mapping[Any, list[Any]] = await self._consumer.getmany(
                    timeout_ms=poll_ms, max_records=self._config.max_records
                )
        except TimeoutError:
            return {}
        return fetched

    def _buffer(self, fetched: Mapping[Any, list[Any]]) -> None:
        for kafka_tp, messages in fetched.items():
            tp: TP = (kafka_tp.topic, kafka_tp.partition)
            rank = self._merge.rank(tp[0])
            # Records of partitions revoked since the fetch are someone else's now.
            if rank is None or tp[1] not in self._owned or not messages:
                continue
            self._merge.add(tp, _items(messages, tp[0], tp[1], rank))
            if self._merge.pending(tp) > self._config.max_pending and tp not in self._paused:
                self._consumer.pause(kafka_tp)
                self._paused.add(tp)

    async def _release(self) -> list[FeedRecord]:
        caught_up: set[TP] = set()
        async with asyncio.timeout(self._io_timeout):
            for tp in self._merge.tps():
                if await self._caught_up(tp):
                    caught_up.add(tp)
        limit = self._config.max_step_records
        records = self._merge.release(caught_up, time.monotonic(), limit)
        self._backlog = len(records) >= limit
        if self._paused:
            resume = [
                tp
                for tp in self._paused
                if self._merge.pending(tp) <= self._config.max_pending // 2
            ]
            if resume:
                self._consumer.resume(*(TopicPartition(*tp) for tp in resume))
                self._paused.difference_update(resume)
        self.stats.held = self._merge.held
        self.stats.forced_releases = self._merge.forced
        return records

    async def _caught_up(self, tp: TP) -> bool:
        kafka_tp = TopicPartition(*tp)
        try:
            highwater: int | None = self._consumer.highwater(kafka_tp)
            if highwater is None:
                return False
            position: int = await self._consumer.position(kafka_tp)
        except (AssertionError, IllegalStateError):
            return False  # Not assigned any more: the rebalance will clear the queue.
        return position >= highwater

    async def _step(self, records: Sequence[FeedRecord]) -> None:
        """Apply records to the books and start the step's I/O (:meth:`_finish`) once
        the previous step is stored and the one before that complete. The caller holds
        the lock.

        So a step is applied while the one before is being stored, and stored while the
        one before is being produced and committed: at most two steps are in flight,
        and the counts (:attr:`stats`) trail the books by at most that much. That is
        safe: each phase runs one step at a time, in order (storage, then the
        ``deltas`` topic and the Kafka commit), and the books and ``_processed`` move
        together, between awaits. The one interaction is a rebase (storage lost its
        data) while the previous step is stored: it stores the books as they are, this
        step included, under new epochs; this step then must not store its own
        (old-epoch) snapshots and deltas over them, which the generation it was applied
        in tells (:meth:`_store_step`)."""
        skipped_before = self.processor.skipped
        step = self.processor.process(records, now=self._monotonic())
        skipped = self.processor.skipped - skipped_before
        self._processed.update(step.batch.offsets)
        self._event_partition.update(step.batch.partitions)
        generation = self._generation
        if self._stored is not None:
            await self._stored.wait()
        previous, earlier = self._inflight, self._earlier
        if earlier is not None:
            await earlier  # Its error, if it failed, now.
        if previous is not None and previous.done():
            await previous  # Likewise.
        sent = asyncio.Event()
        stored = self._stored = asyncio.Event()
        task = asyncio.create_task(
            self._finish(step, generation, previous, sent, stored, len(records) - skipped, skipped)
        )
        self._inflight, self._earlier = task, previous
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Storage works on the step while the next records are fetched and applied, but
        # only once it has been sent all of it, which takes a few turns of the loop that
        # nothing else on the way would give it.
        await sent.wait()

    async def _finish(
        self,
        step: Step,
        generation: int,
        previous: asyncio.Task[None] | None,
        sent: asyncio.Event,
        stored: asyncio.Event,
        records: int,
        skipped: int,
    ) -> None:
        """A step's I/O, in the order that makes a crash at any point safe (see the
        module docstring): dead letters and storage (``sent`` is set once the writes
        are on their way, ``stored`` once they are done), then, once the ``previous``
        step's I/O is complete, the ``deltas`` topic and the Kafka commit."""
        try:
            async with asyncio.timeout(self._io_timeout):
                if step.dead_letters:
                    await self._produce_dead_letters(step.dead_letters)
            await self._store_step(step, generation, sent)
        finally:
            sent.set()
            stored.set()
        if previous is not None:
            await previous
        async with asyncio.timeout(self._io_timeout):
            if step.deltas:
                await self._produce_deltas(step.deltas)
            if step.batch.offsets:
                await self._commit(step.batch.offsets)
        # Counted once the step is complete, so a waiter that sees the counts also sees
        # everything the step wrote.
        stats = self.stats
        stats.records += records
        stats.skipped += skipped
        stats.dead_letters += len(step.dead_letters)
        stats.publications += len(step.publications)
        stats.deltas += len(step.deltas)
        stats.steps += 1
        await self._notify()

    async def _settle(self) -> None:
        """Wait until every step in flight is stored, published, produced and committed
        (the last one waits for those before it); raise the error of one that failed.
        Called with the lock held before anything else that writes storage or changes
        which books are held (a staleness tick, a store check, a rebalance, the end)."""
        task, self._inflight = self._inflight, None
        self._earlier = self._stored = None
        if task is not None:
            await task

    async def _abandon(self) -> None:
        """The run is ending on an error: cancel the steps in flight (a crash at that
        point is safe by design) and wait for them to end."""
        self._inflight = self._earlier = self._stored = None
        tasks = list(self._tasks)
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.debug("step in flight ended with %r", task.exception())

    async def _tick(self, now: float) -> None:
        """The staleness guard's step for the events of the partitions owned now: store
        and publish the suspensions, then produce them to the ``deltas`` topic (no Kafka
        offsets move: a crash after the store is safe, the next owner restores the
        suspended books and reopens them when the feed returns)."""
        owned = self._owned
        if not owned:
            return
        where = self._event_partition
        step = self.processor.tick(now, self._clock(), owned=lambda e: where.get(e) in owned)
        if not step.publications:
            return
        for snap in step.batch.snapshots.values():
            if snap.event_id in where:
                step.batch.partitions[snap.event_id] = where[snap.event_id]
        await self._store_step(step)
        async with asyncio.timeout(self._io_timeout):
            if step.deltas:
                await self._produce_deltas(step.deltas)
        self.stats.stale_suspensions += len(step.batch.snapshots)
        self.stats.publications += len(step.publications)
        self.stats.deltas += len(step.deltas)
        log.warning(
            "feed silent for over %.1fs: %d markets suspended (feed_stale)",
            self.processor.staleness.stale_after_s if self.processor.staleness else 0.0,
            len(step.batch.snapshots),
        )

    async def _store_step(
        self, step: Step, generation: int | None = None, sent: asyncio.Event | None = None
    ) -> None:
        """Store and publish a step, retrying while storage is down (with capped backoff;
        the step is idempotent: snapshots overwrite, history is keyed by seq, gateways
        drop repeated messages). Once storage answers again, if it lost what this
        processor wrote (Redis restarted without its data), every book is re-stored
        under a new epoch instead (:meth:`Processor.rebase`). A step applied in an
        earlier ``generation`` than the current one (a rebase came in between) is
        already in storage, as part of the rebase, and is not stored again."""
        delay = 0.1
        failed = False
        while True:
            if generation is not None and generation != self._generation:
                return
            try:
                async with asyncio.timeout(self._io_timeout):
                    if failed and await self._store_lost():
                        step = self._rebase_step()
                        generation = self._generation
                    await commit_step(step, self._store, self._broker, sent=sent)
                return
            except (StoreError, BrokerError, TimeoutError) as exc:
                if self._stopping.is_set():
                    raise
                failed = True
                self.stats.store_retries += 1
                log.warning("storage failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)  # Backoff while storage is down.
                delay = min(delay * 2, 5.0)

    async def _store_lost(self) -> bool:
        """True when the store no longer holds the offsets this processor wrote for a
        partition it owns: its data is gone, and so is the history behind the books."""
        for (topic, partition), offset in list(self._processed.items()):
            owned_and_written = partition in self._owned and offset > 0
            if owned_and_written and await self._store.offsets(topic, partition) is None:
                return True
        return False

    def _rebase_step(self) -> Step:
        step = self.processor.rebase()
        self._generation += 1
        owned = self._owned
        step.batch.offsets.update(
            {tp: off for tp, off in self._processed.items() if tp[1] in owned}
        )
        step.batch.partitions.update({e: p for e, p in self._event_partition.items() if p in owned})
        self.stats.rebases += 1
        log.warning(
            "storage lost its data: %d books re-stored under new epochs", len(step.batch.snapshots)
        )
        return step

    async def check_store(self) -> None:
        """Re-store every book under a new epoch if storage lost its data; called
        periodically, so an idle processor notices too."""
        async with self._lock:
            await self._settle()
            try:
                async with asyncio.timeout(self._io_timeout):
                    lost = await self._store_lost()
            except (StoreError, TimeoutError):
                return  # Still down; the next check or step retries.
            if lost:
                await self._store_step(self._rebase_step())

    async def _produce_dead_letters(self, dead_letters: Sequence[DeadLetter]) -> None:
        topic = self._topics.deadletter
        futures = []
        for dead in dead_letters:
            record = dead.record
            log.debug(
                "dead letter %s/%d@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                dead.reason,
            )
            headers = [
                ("reason", dead.reason.encode()),
                ("topic", record.topic.encode()),
                ("partition", b"%d" % record.partition),
                ("offset", b"%d" % record.offset),
            ]
            futures.append(
                await self._producer.send(topic, record.value, key=record.key, headers=headers)
            )
        await _acknowledged(futures)

    async def _produce_deltas(self, deltas: Sequence[tuple[str, bytes]]) -> None:
        # Whole batches per partition rather than one send per delta (several times
        # cheaper in aiokafka). The producer sends a partition's batches one after the
        # other and is idempotent, so each market's deltas stay in seq order.
        topic = self._topics.deltas
        producer = self._producer
        keys = self._delta_keys
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for market_id, payload in deltas:
            where = keys.get(market_id)
            if where is None:
                where = self._delta_key(market_id)
            records = by_partition.get(where[1])
            if records is None:
                records = by_partition[where[1]] = []
            records.append((where[0], payload))
        # Each batch is closed before it is sent: an open one would linger (linger_ms)
        # for records that will never come, delaying the step by that much.
        futures = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, payload in records:
                if batch.append(key=key, value=payload, timestamp=None) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=payload, timestamp=None) is None:
                        raise DeliveryError(f"a delta of {key!r} is larger than a batch")
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await _acknowledged(futures)

    def _delta_key(self, market_id: str) -> tuple[bytes, int]:
        # The record key and Kafka's default partition for it, cached per market.
        if len(self._delta_keys) > 1_000_000:
            self._delta_keys.clear()
        key = market_id.encode()
        where = self._delta_keys[market_id] = (
            key,
            kafka_partition(key, self._delta_partition_count),
        )
        return where

    async def _commit(self, offsets: Mapping[TP, int]) -> None:
        try:
            await self._consumer.commit({TopicPartition(*tp): off for tp, off in offsets.items()})
        except CommitFailedError as exc:
            # Membership was lost (a rebalance went ahead without us). Storage holds the
            # step; the next owner resumes from the stored offsets either way.
            self.stats.commit_failures += 1
            log.warning("Kafka commit failed, partitions are being reassigned: %s", exc)

    # -- rebalance ---------------------------------------------------------------

    async def _on_revoked(self) -> None:
        # Waiting for the lock, then settling, waits for the step in progress: it is
        # stored, published and committed before the partitions go.
        async with self._lock:
            try:
                await self._settle()
            except Exception as exc:  # noqa: BLE001 - aiokafka logs and swallows
                # listener errors; keep it for run() to raise, so the member leaves.
                log.error("the last step failed: %r", exc)
                self._failure = self._failure or exc
            self._owned = frozenset()
            self._merge.clear()
            self._paused.clear()
        await self._notify()

    async def _on_assigned(self, assigned: Iterable[TP]) -> None:
        async with self._lock:
            try:
                await self._settle()
                async with asyncio.timeout(self._io_timeout):
                    await self._assign(assigned)
            except Exception as exc:  # noqa: BLE001 - aiokafka logs and swallows
                # listener errors; keep it for run() to raise, so the member leaves.
                log.error("partition assignment failed: %r", exc)
                self._failure = self._failure or exc
        await self._notify()

    async def _assign(self, assigned: Iterable[TP]) -> None:
        topics_of: dict[int, set[str]] = {}
        for topic, partition in assigned:
            topics_of.setdefault(partition, set()).add(topic)
        partial = {p: sorted(t) for p, t in topics_of.items() if len(t) != len(self._feed)}
        if partial:
            raise TopicLayoutError(
                f"assigned only some feed topics of partitions {partial}: the feed topics "
                "must have equal partition counts (co-partitioned)"
            )
        numbers = set(topics_of)
        self._drop(self._held - numbers)
        # The feed was not consumed during the rebalance: silence starts over for the
        # events of the partitions kept (restored ones start from their restore).
        self.processor.watch(
            (e for e, p in self._event_partition.items() if p in numbers), self._monotonic()
        )
        for p in sorted(numbers):
            stored = {t: await self._store.offsets(t, p) for t in self._feed}
            if p not in self._held or any(
                stored[t] != self._processed.get((t, p)) for t in self._feed
            ):
                self._drop({p})
                await self._restore(p, stored)
            for topic in self._feed:
                await self._seek((topic, p), stored[topic])
        self._held = numbers
        self._owned = frozenset(numbers)
        self.stats.partitions = self._owned
        self.stats.rebalances += 1
        log.info("assigned partitions %s of %s", sorted(numbers), list(self._feed))

    async def _restore(self, partition: int, stored: Mapping[str, int | None]) -> None:
        snapshots, events = await self._store.load_partition(partition)
        self.processor.restore(snapshots, events, self._monotonic())
        for snap in snapshots:
            self._event_partition[snap.event_id] = partition
        for event in events:
            self._event_partition[event.event_id] = partition
        for topic, offset in stored.items():
            if offset is not None:
                self._processed[(topic, partition)] = offset
        self.stats.restored_markets += len(snapshots)

    async def _seek(self, tp: TP, offset: int | None) -> None:
        kafka_tp = TopicPartition(*tp)
        if offset is None:
            # Nothing of this partition applied (or the store lost it): rebuild from the
            # start of the topic rather than trust Kafka's committed offset alone.
            await self._consumer.seek_to_beginning(kafka_tp)
            self.processor.skip_until.pop(tp, None)
        else:
            self._consumer.seek(kafka_tp, offset)
            self.processor.skip_until[tp] = offset
        self._merge.expect(tp, offset)

    def _drop(self, partitions: set[int]) -> None:
        if not partitions:
            return
        events = {e for e, p in self._event_partition.items() if p in partitions}
        books = self.processor.books
        self.processor.forget(events)
        for event_id in events:
            del self._event_partition[event_id]
            books.events.pop(event_id, None)
        for market_id in [m for m, b in books.markets.items() if b.snapshot.event_id in events]:
            del books.markets[market_id]
        for p in partitions:
            self._merge.forget(p)
            for topic in self._feed:
                self._processed.pop((topic, p), None)
                self.processor.skip_until.pop((topic, p), None)
        self._held -= partitions


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: BooksRunner):
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self._runner._on_revoked()

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        await self._runner._on_assigned([(tp.topic, tp.partition) for tp in assigned])


def _items(messages: Iterable[Any], topic: str, partition: int, rank: int) -> list[MergeItem]:
    """Merge items of one partition's fetched records (the hot loop of the input side)."""
    items: list[MergeItem] = []
    append = items.append
    for message in messages:
        producer: bytes | None = None
        seq = 0
        headers = message.headers
        # KafkaFeedProducer puts its header first.
        if headers and headers[0][0] == ORDER_HEADER:
            producer, _, number = headers[0][1].rpartition(b":")
            seq = int(number)
        else:
            for name, value in headers:
                if name == ORDER_HEADER:
                    producer, _, number = value.rpartition(b":")
                    seq = int(number)
                    break
        record = FeedRecord(topic, partition, message.offset, message.value, message.key)
        append(MergeItem(record, (message.timestamp, seq, rank), producer, seq))
    return items


async def _acknowledged(futures: Sequence[asyncio.Future[Any]]) -> None:
    # Every future is awaited (none left with an unretrieved error); the first error wins.
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise DeliveryError(f"Kafka did not acknowledge a record: {result!r}") from result
