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
stand: on assignment the runner claims each partition (a fencing token, see
:mod:`channels.fencing`), restores the books from the store and seeks to the offsets
stored with them, so each market's ``seq`` continues with no gap and no reuse. Every
write carries the tokens: a runner that lost its partitions without noticing (paused past
the session timeout) is refused by the store and stops (:class:`FencedError`).
Kafka's committed offsets trail the store and serve lag monitoring and tooling.

Crash windows: a crash after (1) and before (2) replays the step, so its dead letters may
be written twice (at least once). A crash after (2) and before (3) is acknowledged loses
that step's messages on the ``deltas`` topic (at most once there), since the store
already says they were applied; gateways are unaffected (they read the store). With
``config.exactly_once``, (3) and (4) are one Kafka transaction per feed partition and
the step's messages wait in a store outbox that the next owner re-produces
(:mod:`feeds.transactions`): the ``deltas`` topic exactly once.

Pipelining: a step's I/O runs in a task while the loop fetches, merges and applies the
next records; when each step may do what is decided, without I/O, by
:class:`feeds.steps.StepPipeline` (the rules, and what a rebase does to a step in
flight, are in :mod:`feeds.steps`). Each phase runs one step at a time, in step order;
at most two steps do I/O at once, and a rebalance, a store check or a stop waits for the
pipeline to empty first. The records a step applies come in send order from
:class:`feeds.merge.CrossTopicMerge`.

Staleness runs on its own timer (a task of the runner, not a turn of the Kafka loop):
its step enters the pipeline like a feed step without waiting for room, so during a
Kafka outage the suspensions reach storage and pub/sub while the steps before them wait
to be produced and committed.

This module is the shell around aiokafka: partition lifecycle (assignment, restore,
seek, revocation), fetching, and performing each step's I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.protocol.group import LeaveGroupRequest

from channels.broker import BrokerError
from channels.fencing import FencedError
from channels.stamps import now_us
from channels.store import Store, StoreError
from feeds.embedded import epoch_minter, now_ms, tick_interval
from feeds.eviction import FINISHED_TTL_S, RETENTION_S, Lookup, recall
from feeds.kafka_feed import (
    DEFAULT_TOPICS,
    ORDER_HEADER,
    DeliveryError,
    TopicLayoutError,
    TopicNames,
    feed_partitions,
    kafka_partition,
    new_producer,
    start_client,
)
from feeds.merge import TP, CrossTopicMerge, MergeItem
from feeds.observe import NOT_STAMPED, Stamped, StepObserver
from feeds.processor import DeadLetter, FeedRecord, Processor, Publisher, Step, commit_step
from feeds.staleness import STALE_AFTER_S
from feeds.steps import Flight, StepPipeline
from feeds.transactions import DeltaTransactions, encode_entry, split

log = logging.getLogger(__name__)


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
    heartbeat_interval_ms: int = 250
    """How soon a member notices a rebalance (and hands partitions over, or takes those
    of a member evicted for its silent owner beat: :mod:`feeds.liveness`)."""
    linger_ms: int = 5
    fetch_max_wait_ms: int = 5
    """Longest the broker holds a fetch for partitions with nothing new. aiokafka keeps one
    fetch in flight per broker, and a partition whose records were just taken joins only
    the next one: with Kafka's 500 ms default, a record arriving meanwhile waited for the
    idle partitions' long poll (the ``kafka`` stage of ``docs/observability.md``)."""
    store_check_s: float = 2.0
    """How often an idle processor checks that storage still holds its books."""
    exactly_once: bool = False
    """Produce each step's deltas in Kafka transactions per feed partition, with an
    outbox in the store the next owner re-produces from (:mod:`feeds.transactions`):
    the ``deltas`` topic exactly once. Off: at most once across a crash."""
    stale_after_s: float | None = STALE_AFTER_S
    """Longest silence of the feed about an event before its open markets are suspended
    with reason ``feed_stale`` (reopened when the feed speaks again); ``None``: never.
    See :mod:`feeds.staleness`."""
    metrics: bool = True
    """Observe each step (stage stamps, step and Redis-write histograms)."""
    retention_s: float | None = RETENTION_S
    """How long a settled or voided market, or an ended event, is kept after that step
    (then restored from storage if the feed speaks of it again); ``None``: forever. See
    :mod:`feeds.eviction`."""
    finished_ttl_s: float | None = FINISHED_TTL_S
    """TTL of the storage keys of an ended event; ``None``: none."""


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
    reproduced: int = 0
    """Messages produced to ``deltas`` from the outbox: a previous owner stored them and
    died (or was fenced) before its transaction committed."""
    fenced: int = 0
    """Writes the store refused because another processor owns the partitions now
    (the runner stops at the first)."""
    partitions: frozenset[int] = frozenset()
    """Partition numbers owned now."""
    markets: int = 0
    events: int = 0
    """Books of markets and events in memory after the last step (see retention)."""

    def line(self) -> str:
        return (
            f"records={self.records} deltas={self.deltas} dead_letters={self.dead_letters} "
            f"steps={self.steps} held={self.held} partitions={sorted(self.partitions)} "
            f"markets={self.markets} events={self.events} "
            f"rebalances={self.rebalances} skipped={self.skipped} "
            f"forced={self.forced_releases} commit_failures={self.commit_failures} "
            f"store_retries={self.store_retries} rebases={self.rebases} "
            f"stale_suspensions={self.stale_suspensions} fenced={self.fenced} "
            f"reproduced={self.reproduced}"
        )


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
            epoch_minter(clock),
            stale_after_s=config.stale_after_s,
            retention_s=config.retention_s,
            finished_ttl_s=config.finished_ttl_s,
        )
        self._clock = clock
        self._monotonic = monotonic
        guard = self.processor.staleness
        self._tick_s = None if guard is None else tick_interval(guard.stale_after_s)
        self.stats = BooksStats()
        self.observer = StepObserver(config.metrics)
        self._merge = CrossTopicMerge(self._feed, config.max_hold_ms / 1000)
        self._io_timeout = config.io_timeout_s
        # Serialises applying a step and starting its I/O (store -> publish -> produce
        # -> commit, see _step) with the rebalance callbacks, which aiokafka runs in its
        # coordinator task, and which settle the I/O in flight before going on.
        self._lock = asyncio.Lock()
        self._pipeline = StepPipeline()
        """The steps applied and not yet done, and when each may do what
        (:mod:`feeds.steps`)."""
        self._moved = asyncio.Event()
        """Set (and replaced) whenever a step in the pipeline moves on or fails."""
        self._tasks: set[asyncio.Task[None]] = set()
        """The I/O task of every step in the pipeline that started it."""
        self.observers: list[Callable[[], None]] = []
        """Called after every step, rebalance and loop turn, and when :meth:`run` ends
        (progress reports, metrics, tests waiting for a condition on :attr:`stats`)."""
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._failure: BaseException | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._owned: frozenset[int] = frozenset()
        """Partition numbers whose records are processed now (empty during a rebalance)."""
        self._revoking = False
        self._held: set[int] = set()
        """Partition numbers whose books are in memory."""
        self._fence: dict[int, int] = {}
        """Fencing token of each partition number of the last assignment, carried by
        every write (:mod:`channels.fencing`)."""
        self._processed: dict[TP, int] = {}
        """Next offset per feed partition, as applied to the books (and stored)."""
        self._event_partition: dict[str, int] = {}
        self._paused: set[TP] = set()
        self._delta_partition_count = 0
        self._delta_keys: dict[str, tuple[bytes, int]] = {}
        self._backlog = False
        self._txn: DeltaTransactions | None = None
        """The transactional producers, with ``config.exactly_once``."""

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
                timer = None
                if self._tick_s is not None:
                    timer = asyncio.create_task(self._stale_timer(self._tick_s))
                    stack.push_async_callback(_cancelled, timer)  # A stop lets it end.
                checked = time.monotonic()
                while not self._stopping.is_set():
                    failure = self._failure or self._pipeline.failure
                    if failure is not None:
                        raise failure
                    if time.monotonic() - checked > self._config.store_check_s:
                        checked = time.monotonic()
                        await self.check_store()
                    # Back-pressure: the steps before are stored, or being sent.
                    await self._until(lambda: self._pipeline.has_room)
                    # The last step's I/O runs on while the next records are fetched,
                    # merged and applied (see _step).
                    fetched = await self._fetch()
                    async with self._lock:
                        self._buffer(fetched)
                        records = await self._release()
                        if records:
                            await self._step(records)
                    self._observe()
                if timer is not None:
                    await timer
                async with self._lock:
                    await self._settle()
        except BaseException as exc:
            self._failure = self._failure or exc
            raise
        finally:
            self._owned = self.stats.partitions = frozenset()
            self._done.set()
            self._observe()

    async def stop(self) -> None:
        """Finish the step in progress, commit, leave the group and return when
        :meth:`run` has ended (its error, if any, is raised by :meth:`run`)."""
        self._stopping.set()
        if self._started:
            await self._done.wait()

    @property
    def counts(self) -> dict[str, int]:
        """What ``/metrics`` reads (:class:`feeds.observe.BooksCollector`)."""
        stats = self.stats
        return {
            "markets_held": len(self.processor.books.markets),
            "records": stats.records,
            "steps": stats.steps,
            "rebalances": stats.rebalances,
            "store_retries": stats.store_retries,
        }

    def lag(self) -> dict[int, int]:
        """Records below Kafka's high watermark not yet applied, per partition number
        owned (summed over the feed topics); partitions not fetched yet are left out."""
        lag: dict[int, int] = {}
        consumer = self._consumer
        if consumer is None:
            return lag
        for topic in self._feed:
            for partition in self._owned:
                highwater = consumer.highwater(TopicPartition(topic, partition))
                if highwater is not None:
                    done = self._processed.get((topic, partition), 0)
                    lag[partition] = lag.get(partition, 0) + max(0, highwater - done)
        return lag

    @property
    def ended(self) -> bool:
        """:meth:`run` has returned or raised."""
        return self._done.is_set()

    # -- membership (for the owner beat: feeds/liveness.py) ------------------------

    @property
    def group(self) -> str:
        return self._config.group_id

    @property
    def member(self) -> str | None:
        """This member's Kafka member id; None until it joined the group."""
        # aiokafka keeps it on its group coordinator, with no public accessor.
        member = getattr(getattr(self._consumer, "_coordinator", None), "member_id", "")
        return member if isinstance(member, str) and member else None

    @property
    def holds(self) -> frozenset[int]:
        """The partition numbers whose books this member holds and processes now: none
        from the moment a revocation starts (its last step may wait for Kafka) until
        the next assignment."""
        return frozenset() if self._revoking else self._owned

    async def evict(self, member: str) -> bool:
        """Remove another member from the group at once: a LeaveGroup on its behalf, sent
        to the group coordinator, which rebalances as if the member had left. False when
        the coordinator knew no such member (it left or was evicted already). Raises
        :class:`aiokafka.errors.KafkaError` when the coordinator cannot be reached."""
        coordinator = self._consumer._coordinator  # aiokafka has no public API for this.
        response = await coordinator._send_req(LeaveGroupRequest(self.group, member))
        error: int = response.error_code
        return error == 0

    def _observe(self) -> None:
        for observer in self.observers:
            observer()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        config = self._config
        await feed_partitions(self._bootstrap, topics=self._topics, timeout_s=self._io_timeout)
        producer = new_producer(
            self._bootstrap,
            client_id=f"{config.client_id}-out",
            linger_ms=config.linger_ms,
            request_timeout_ms=int(self._io_timeout * 1000),
        )
        await start_client(stack, producer, self._io_timeout)
        self._producer = producer
        async with asyncio.timeout(self._io_timeout):
            self._delta_partition_count = len(await producer.partitions_for(self._topics.deltas))
        if config.exactly_once:
            self._txn = DeltaTransactions(
                self._bootstrap,
                group_id=config.group_id,
                deltas=self._topics.deltas,
                feed=self._feed,
                key_of=self._delta_key,
                client_id=config.client_id,
                linger_ms=config.linger_ms,
                timeout_s=self._io_timeout,
            )
            stack.push_async_callback(self._txn.close_all)
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
            fetch_max_wait_ms=config.fetch_max_wait_ms,
        )
        # Stopping the consumer commits nothing (auto-commit is off) and leaves the
        # group, so the partitions are reassigned without waiting for a session timeout.
        await start_client(stack, consumer, self._io_timeout)
        self._consumer = consumer
        consumer.subscribe(topics=list(self._feed), listener=_Listener(self))

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
        received = now_us()
        for kafka_tp, messages in fetched.items():
            tp: TP = (kafka_tp.topic, kafka_tp.partition)
            rank = self._merge.rank(tp[0])
            # Records of partitions revoked since the fetch are someone else's now.
            if rank is None or tp[1] not in self._owned or not messages:
                continue
            self._merge.add(tp, _items(messages, tp[0], tp[1], rank, received))
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
        """Apply records to the books and start the step's I/O (:meth:`_finish`) when the
        pipeline allows (:meth:`StepPipeline.may_store`). The caller holds the lock.

        The books and ``_processed`` move together, between awaits; the counts
        (:attr:`stats`) trail them by the steps in the pipeline."""
        skipped_before = self.processor.skipped
        now = self._monotonic()
        started = time.perf_counter()
        step = self.processor.process(records, now=now)
        resumed = 0
        while (lookup := step.lookup) is not None:
            await self._recall(lookup)
            resumed += lookup.resume  # Each lookup counts from the records it was given.
            step = self.processor.process(records[resumed:], now=now, step=step)
        stamp = self.observer.applied(records, time.perf_counter() - started)
        span = self.observer.step_span(records)
        for event_id in self.processor.evict(now):
            self._event_partition.pop(event_id, None)
        self.stats.markets = len(self.processor.books.markets)
        self.stats.events = len(self.processor.books.events)
        skipped = self.processor.skipped - skipped_before
        self._processed.update(step.batch.offsets)
        self._event_partition.update(step.batch.partitions)
        self._add_outbox(step)
        await self._launch(step, len(records) - skipped, skipped, Stamped(stamp, span))

    async def _launch(
        self, step: Step, records: int, skipped: int, stamped: Stamped = NOT_STAMPED
    ) -> None:
        """Put an applied step in the pipeline and start its I/O once it may store;
        return once its writes are on their way. The caller holds the lock."""
        pipeline = self._pipeline
        flight = pipeline.apply(step, records, skipped)
        await self._until(lambda: pipeline.may_store(flight))
        sent = asyncio.Event()
        task = asyncio.create_task(self._finish(flight, sent, stamped))
        self._tasks.add(task)
        task.add_done_callback(self._step_ended)
        # Storage works on the step while the next records are fetched and applied, but
        # only once it has been sent all of it, which takes a few turns of the loop that
        # nothing else on the way would give it.
        await sent.wait()

    async def _recall(self, lookup: Lookup) -> None:
        """Restore the books a step needs from storage, once every step before it is
        stored (so storage holds all they did), retrying while storage is down."""
        await self._settle()
        delay = 0.1
        async with asyncio.timeout(self._io_timeout):
            while True:
                try:
                    recalled = await recall(self._store, lookup, self.processor.books.markets)
                    break
                except StoreError as exc:
                    log.warning("restoring books from storage failed, retrying: %s", exc)
                    await asyncio.sleep(delay)  # Backoff, not synchronisation.
                    delay = min(delay * 2, 2.0)
        self.processor.recover(recalled, self._monotonic())
        self.stats.restored_markets += len(recalled.snapshots)

    async def _finish(self, flight: Flight, sent: asyncio.Event, stamped: Stamped) -> None:
        """A step's I/O, in the order that makes a crash at any point safe (see the
        module docstring and :mod:`feeds.steps`): dead letters and storage (``sent`` is
        set once the writes are on their way), then, once every earlier step is done, the
        ``deltas`` topic and the Kafka commit."""
        pipeline, step = self._pipeline, flight.step
        try:
            try:
                store = pipeline.storing(flight)
                async with asyncio.timeout(self._io_timeout):
                    if step.dead_letters:
                        await self._produce_dead_letters(step.dead_letters)
                if store:
                    await self._store_step(step, sent, stamped)
            finally:
                sent.set()
            pipeline.stored(flight)
            self._move()
            await self._until(lambda: pipeline.may_send(flight))
            pipeline.sending(flight)
            async with asyncio.timeout(self._io_timeout):
                await self._send_deltas(step)
                if step.batch.offsets and self._txn is None:
                    await self._commit(step.batch.offsets)
            pipeline.done(flight)
        except BaseException as exc:
            pipeline.fail(exc)
            raise
        finally:
            self._move()
            if stamped.span is not None:
                stamped.span.set_attribute("oddstream.step.publications", len(step.publications))
                stamped.span.end()
        # Counted once the step is done, so an observer that sees the counts also sees
        # everything the step wrote.
        stats = self.stats
        stats.records += flight.records
        stats.skipped += flight.skipped
        stats.dead_letters += len(step.dead_letters)
        stats.publications += len(step.publications)
        stats.deltas += len(step.deltas)
        stats.steps += 1
        self._observe()

    def _move(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``; raise the pipeline's failure if it fails first."""
        while not ready():
            if self._pipeline.failure is not None:
                raise self._pipeline.failure
            await self._moved.wait()

    def _step_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("step I/O ended with %r", task.exception())  # Kept by the pipeline.

    async def _settle(self) -> None:
        """Wait until every step in the pipeline is stored, published, produced and
        committed; raise the error of one that failed. Called with the lock held before
        anything else that writes storage or changes which books are held (a staleness
        tick, a store check, a rebalance, the end)."""
        await self._until(lambda: self._pipeline.settled)

    async def _abandon(self) -> None:
        """The run is ending on an error: cancel the steps in flight (a crash at that
        point is safe by design) and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _stale_timer(self, tick_s: float) -> None:
        """The staleness guard's own timer: a tick every ``tick_s`` until :meth:`stop`,
        whatever the Kafka loop is waiting for. A failure is kept for :meth:`run`."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick_s):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return
                async with self._lock:
                    await self._tick(self._monotonic())
                self._observe()
        except Exception as exc:  # noqa: BLE001 - kept for run() to raise.
            self._failure = self._failure or exc

    async def _tick(self, now: float) -> None:
        """The staleness guard's step for the events of the partitions owned now, a step
        of the pipeline like a feed step: stored and published once the steps before it
        are stored, then produced to the ``deltas`` topic once they are done (it moves no
        Kafka offsets: a crash after the store is safe, the next owner restores the
        suspended books and reopens them when the feed returns). The caller holds the
        lock."""
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
        self._add_outbox(step)
        self.stats.stale_suspensions += len(step.batch.snapshots)
        await self._launch(step, 0, 0)
        log.warning(
            "feed silent for over %.1fs: %d markets suspended (feed_stale)",
            self.processor.staleness.stale_after_s if self.processor.staleness else 0.0,
            len(step.batch.snapshots),
        )

    async def _store_step(
        self, step: Step, sent: asyncio.Event | None = None, stamped: Stamped = NOT_STAMPED
    ) -> None:
        """Store and publish a step, retrying while storage is down (with capped backoff;
        the step is idempotent: snapshots overwrite, history is keyed by seq, gateways
        drop repeated messages). Once storage answers again, if it lost what this
        processor wrote (Redis restarted without its data), every book is re-stored
        under a new epoch instead (:meth:`Processor.rebase`). Each publication carries
        the envelope of the step's ``stamped`` (:mod:`channels.stamps`). Raises
        :class:`FencedError`, not retried, when another processor took the partitions."""
        delay = 0.1
        failed = False
        while True:
            try:
                async with asyncio.timeout(self._io_timeout):
                    if failed and await self._store_lost():
                        step = self._rebase_step()
                    step.batch.fence = self._fence
                    publications = self.observer.publications(step, *stamped)
                    enveloped = dataclasses.replace(step, publications=publications)
                    started = time.perf_counter()
                    await commit_step(enveloped, self._store, self._broker, sent=sent)
                    self.observer.stored(time.perf_counter() - started)
                return
            except FencedError as exc:
                self._fenced(exc)
                raise
            except (StoreError, BrokerError, TimeoutError) as exc:
                failed = True
                delay = await self._back_off(exc, delay)

    def _fenced(self, exc: FencedError) -> None:
        self.stats.fenced += 1
        log.error("fenced: %s; this processor lost its partitions and stops", exc)

    async def _back_off(self, exc: Exception, delay: float) -> float:
        """Storage failed: wait ``delay`` and return the next one (capped), or raise
        ``exc`` when stopping."""
        if self._stopping.is_set():
            raise exc
        self.stats.store_retries += 1
        log.warning("storage failed (%s); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)  # Backoff while storage is down.
        return min(delay * 2, 5.0)

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
        self._pipeline.rebase()
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
            self.observer.dead_letter(dead)
            record = dead.record
            log.debug(
                "dead letter %s/%d@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                dead.reason,
                extra={"topic": record.topic, "partition": record.partition},
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

    def _add_outbox(self, step: Step) -> None:
        """With transactions: the step's outbox entry per partition it touched."""
        if self._txn is None:
            return
        markets = self.processor.books.markets
        where = self._event_partition
        by_partition = split(step.deltas, lambda m: where[markets[m].snapshot.event_id])
        for p in {*by_partition, *(tp[1] for tp in step.batch.offsets)}:
            offsets = {t: self._processed.get((t, p), 0) for t in self._feed}
            entry = self._txn.entry(p, by_partition.get(p, []), offsets)
            step.batch.outbox[p] = encode_entry(entry)

    async def _send_deltas(self, step: Step) -> None:
        """The step's messages to the ``deltas`` topic: in its transactions (with its
        offsets), or produced and acknowledged."""
        if self._txn is not None:
            try:
                await self._txn.send_step(step.batch.outbox)
            except FencedError as exc:
                self._fenced(exc)
                raise
        elif step.deltas:
            await self._produce_deltas(step.deltas)

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
        self._revoking = True
        # Waiting for the lock, then settling, waits for the step in progress: it is
        # stored, published and committed before the partitions go.
        async with self._lock:
            try:
                await self._settle()
            except Exception as exc:  # noqa: BLE001 - aiokafka logs and swallows
                # listener errors; keep it for run() to raise, so the member leaves.
                log.error("the last step failed: %r", exc)
                self._failure = self._failure or exc
            self._owned = self.stats.partitions = frozenset()
            self._merge.clear()
            self._paused.clear()
        self._observe()

    async def _on_assigned(self, assigned: Iterable[TP]) -> None:
        async with self._lock:
            try:
                await self._settle()
                delay = 0.1
                while True:
                    try:
                        async with asyncio.timeout(self._io_timeout):
                            await self._assign(assigned)
                        break
                    except StoreError as exc:  # Storage down: assign again once it is up.
                        delay = await self._back_off(exc, delay)
            except Exception as exc:  # noqa: BLE001 - aiokafka logs and swallows
                # listener errors; keep it for run() to raise, so the member leaves.
                log.error("partition assignment failed: %r", exc)
                self._failure = self._failure or exc
        self._observe()

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
        # Claimed before anything is read: a previous owner's write is refused from here
        # on, or already in what is read.
        self._fence = {p: await self._store.claim(p) for p in sorted(numbers)}
        for p in sorted(numbers):
            stored = {t: await self._store.offsets(t, p) for t in self._feed}
            if p not in self._held or any(
                stored[t] != self._processed.get((t, p)) for t in self._feed
            ):
                self._drop({p})
                await self._restore(p, stored)
            for topic in self._feed:
                await self._seek((topic, p), stored[topic])
            if self._txn is not None:
                await self._txn.open(p, await self._store.outbox(p))
        if self._txn is not None:
            for p in self._txn.partitions - numbers:
                await self._txn.close(p)
            self.stats.reproduced = self._txn.reproduced
        self._held = numbers
        self._owned = frozenset(numbers)
        self._revoking = False
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


def _items(
    messages: Iterable[Any], topic: str, partition: int, rank: int, received_us: int
) -> list[MergeItem]:
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
        record = FeedRecord(
            topic, partition, message.offset, message.value, message.key, headers, received_us
        )
        append(MergeItem(record, (message.timestamp, seq, rank), producer, seq))
    return items


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def _acknowledged(futures: Sequence[asyncio.Future[Any]]) -> None:
    # Every future is awaited (none left with an unretrieved error); the first error wins.
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise DeliveryError(f"Kafka did not acknowledge a record: {result!r}") from result
