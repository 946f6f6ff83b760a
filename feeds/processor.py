"""The book processor: feed records in; storage, pub/sub and the deltas topic out.

:class:`Processor` is the pure core: it decodes a batch of records, applies them to the
books, and returns a :class:`Step` saying what to store, publish and dead-letter, every
message encoded exactly once. :func:`commit_step` performs a step's I/O in the order that
makes crashes safe: storage first (snapshots, history and the offsets they reflect, in
one atomic write), then publication, then the Kafka commit by the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec

import protocol
from channels.names import route
from channels.store import Batch, PublishingStore, Store
from feeds.book import Books, FeedRejected
from feeds.eviction import Lookup, Recalled, Retention
from feeds.model import FeedEvent, FeedMarketStatus, FeedMessage, decode_feed
from feeds.staleness import StalenessGuard
from protocol import FINAL_MARKET_STATES, Delta, EventState, Snapshot


class FeedRecord(msgspec.Struct, frozen=True, gc=False):
    """One record of a feed topic, as consumed (Kafka or the in-memory bus). A Struct
    rather than a frozen dataclass: one is made per record, and a Struct is made
    several times faster."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    """The Kafka record's headers (stage stamps, trace context: :mod:`feeds.observe`)."""
    received_us: int = 0
    """When this process received it (wall-clock microseconds; 0: unknown)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: FeedRecord
    reason: str


@dataclass(slots=True)
class Step:
    """The result of processing one batch of records."""

    batch: Batch = field(default_factory=Batch)
    publications: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    deltas: list[tuple[str, bytes]] = field(default_factory=list)
    """(market_id, payload) for the downstream ``deltas`` topic, in seq order per market."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    applied: int = 0
    starts: list[int] = field(default_factory=list)
    """Per record given to :meth:`Processor.process`, the index of its first publication
    (a record's publications end where the next one's start): each delta's own stamps
    (:mod:`feeds.observe`)."""
    lookup: Lookup | None = None
    """Set when the step stopped at a record that needs books from storage: the caller
    reads them (:func:`feeds.eviction.recall`), passes them to :meth:`Processor.recover`
    and calls :meth:`Processor.process` again with the records from ``lookup.resume``
    and this step."""


class Processor:
    """Applies feed records to the books of the partitions this process owns.

    ``skip_until`` maps (topic, partition) to the first offset not yet reflected in the
    restored books: records below it were applied before a crash or hand-over and are
    skipped, so nothing is applied twice.

    With ``stale_after_s``, a :class:`~feeds.staleness.StalenessGuard` suspends the open
    markets of events the feed has been silent about for that long (:meth:`tick`) and
    reopens them when it speaks again (in :meth:`process`); both need the caller's
    clock, passed as ``now`` (monotonic seconds).

    With ``retention_s``, settled and voided markets and ended events are forgotten that
    long after (:meth:`evict`, :mod:`feeds.eviction`), and a message about a book not
    held stops the step for a storage lookup (:attr:`Step.lookup`). With
    ``finished_ttl_s``, every write about an ended event asks storage to expire its keys
    that long after.
    """

    def __init__(
        self,
        new_epoch: Callable[[str], str],
        *,
        stale_after_s: float | None = None,
        retention_s: float | None = None,
        finished_ttl_s: float | None = None,
    ):
        self._new_epoch = new_epoch
        self.books = Books(new_epoch)
        self.skip_until: dict[tuple[str, int], int] = {}
        self.skipped = 0
        self.staleness = StalenessGuard(stale_after_s) if stale_after_s else None
        self._routes: dict[str, tuple[str]] = {}
        """Per event: the one route its messages and its markets' are published on."""
        self.retention = Retention(retention_s) if retention_s else None
        self._ttl_ms = round(finished_ttl_s * 1000) if finished_ttl_s else 0
        self._forgotten: dict[str, set[str]] = {}
        """With retention: every event whose stored markets this processor knows, with
        those it does not hold (forgotten). An event missing here is looked up."""
        self._now = 0.0

    def process(
        self, records: Sequence[FeedRecord], *, now: float | None = None, step: Step | None = None
    ) -> Step:
        """Apply a batch of records (into ``step``, going on with a step that stopped for
        a lookup). ``now`` (monotonic seconds) is when they arrived; without it the
        staleness guard, if any, does not hear them, and retention counts from 0."""
        step = step or Step()
        step.lookup = None
        self._now = 0.0 if now is None else now
        forgotten = self._forgotten if self.retention is not None else None
        batch = step.batch
        offsets = batch.offsets
        partitions = batch.partitions
        dead_letters = step.dead_letters
        skip_until = self.skip_until
        apply = self.books.apply
        emit = self._emit
        guard = self.staleness if now is not None else None
        heard_at = 0.0 if now is None else now
        applied = 0
        starts = step.starts
        publications = step.publications
        for index, record in enumerate(records):
            starts.append(len(publications))
            tp = (record.topic, record.partition)
            offset = record.offset
            if skip_until and offset < skip_until.get(tp, 0):
                self.skipped += 1
                continue
            offsets[tp] = offset + 1
            try:
                message = decode_feed(record.value)
            except msgspec.DecodeError as exc:
                dead_letters.append(DeadLetter(record, f"malformed: {exc}"))
                continue
            if forgotten is not None and _wanted(forgotten, message):
                starts.pop()  # The record starts again once its books are restored.
                step.applied += applied
                step.lookup = self._lookup(records, index)
                return step
            # Anything about the event, even a message refused below, shows its feed is
            # alive; the markets the guard suspended reopen after the message is applied.
            returned = guard is not None and guard.heard(message.event_id, heard_at)
            try:
                output = apply(message)
            except FeedRejected as exc:
                dead_letters.append(DeadLetter(record, f"{exc.reason}: {exc.message}"))
            else:
                applied += 1
                partitions[message.event_id] = record.partition
                if output is not None:
                    emit(step, output)
            if returned and guard is not None:
                self._apply_own(step, guard.reopenings(message.event_id, self.books, message.ts))
        step.applied += applied
        return step

    def tick(self, now: float, ts: int, owned: Callable[[str], bool] | None = None) -> Step:
        """The staleness guard's step: suspend the open markets of every event (``owned``,
        when given) silent for longer than the bound. ``now`` is monotonic seconds, ``ts``
        the wall clock (epoch ms) stamped on the suspensions. The step has no offsets; the
        caller adds the partitions of its events if its store needs them."""
        step = Step()
        if self.staleness is not None:
            self._apply_own(step, self.staleness.suspensions(self.books, now, ts, owned))
        return step

    def restore(
        self, snapshots: Sequence[Snapshot], events: Sequence[EventState], now: float
    ) -> None:
        """Load books saved earlier (restart or hand-over: every stored book of their
        events); the guard watches their events from ``now`` and adopts the markets
        suspended as stale; retention counts from ``now``."""
        self.books.restore(snapshots, events)
        if self.staleness is not None:
            self.staleness.adopt(snapshots, events, now)
        retention = self.retention
        if retention is None:
            return
        for state in events:
            self._forgotten[state.event_id] = set()
            retention.event(state.event_id, state.phase == "ended", now)
        for snap in snapshots:
            self._forgotten.setdefault(snap.event_id, set()).discard(snap.market_id)
            retention.market(snap.market_id, snap.status in FINAL_MARKET_STATES, now)

    def recover(self, recalled: Recalled, now: float) -> None:
        """Restore what a step's lookup read from storage (:func:`feeds.eviction.recall`)."""
        for event_id in recalled.events:
            self._forgotten.setdefault(event_id, set())
        # A forgotten market storage no longer has (expired, or lost with a Redis that
        # restarted empty) is unknown from now on, as if never seen.
        for market_id, event_id in recalled.markets.items():
            self._forgotten.get(event_id, set()).discard(market_id)
        states = [s for s in recalled.events.values() if s is not None]
        self.restore(recalled.snapshots, states, now)

    def evict(self, now: float) -> list[str]:
        """Forget the markets and events whose retention ran out at ``now``; returns the
        events forgotten (the caller drops what it keeps about them)."""
        if self.retention is None:
            return []
        market_ids, event_ids = self.retention.due(now)
        markets = self.books.markets
        forgotten = self._forgotten
        for market_id in market_ids:
            book = markets.pop(market_id, None)
            if book is not None and (ids := forgotten.get(book.snapshot.event_id)) is not None:
                ids.add(market_id)
        if event_ids:
            ended = set(event_ids)
            dropped = [m for m, b in markets.items() if b.snapshot.event_id in ended]
            for market_id in dropped:
                del markets[market_id]
            self.retention.drop(market_ids=dropped)
            for event_id in event_ids:
                self.books.events.pop(event_id, None)
                forgotten.pop(event_id, None)
                self._routes.pop(event_id, None)
            if self.staleness is not None:
                self.staleness.forget(event_ids)
        return event_ids

    def _lookup(self, records: Sequence[FeedRecord], start: int) -> Lookup:
        """What the records from ``start`` on need from storage (decoded once more:
        only steps that meet a new event or a forgotten market pay for it)."""
        lookup = Lookup(start)
        forgotten = self._forgotten
        for record in records[start:]:
            try:
                message = decode_feed(record.value)
            except msgspec.DecodeError:
                continue
            ids = forgotten.get(message.event_id)
            if ids is None:
                lookup.events.add(message.event_id)
            elif not isinstance(message, FeedEvent) and message.market_id in ids:
                lookup.markets[message.market_id] = message.event_id
        return lookup

    def watch(self, event_ids: Iterable[str], now: float) -> None:
        """Count the events as heard ``now`` (their feed could not be read until now,
        e.g. during a rebalance); stale ones stay stale until the feed speaks."""
        if self.staleness is not None:
            self.staleness.watch(event_ids, now)

    def forget(self, event_ids: Iterable[str]) -> None:
        """Events whose books are being dropped (their partition went elsewhere)."""
        self._routes.clear()  # Rebuilt as events are seen again.
        event_ids = set(event_ids)
        if self.staleness is not None:
            self.staleness.forget(event_ids)
        if self.retention is not None:
            dropped = [m for m, b in self.books.markets.items() if b.snapshot.event_id in event_ids]
            self.retention.drop(dropped, event_ids)
            for event_id in event_ids:
                self._forgotten.pop(event_id, None)

    def _apply_own(self, step: Step, changes: Iterable[FeedMarketStatus]) -> None:
        for change in changes:
            try:
                output = self.books.apply(change)
            except FeedRejected:
                continue  # Cannot happen (the guard only moves open <-> suspended); safe.
            if output is not None:
                self._emit(step, output)

    def rebase(self) -> Step:
        """A step that restarts every book under a new epoch, at the same ``seq``: for
        when storage lost the snapshots and history behind the streams (Redis restarted
        without its data). Gateways and clients holding the old epoch take the new
        snapshots instead of trusting seq continuity (guarantee 5). The caller adds the
        offsets and partitions the books reflect."""
        step = Step()
        for market_id, book in self.books.markets.items():
            fresh = msgspec.structs.replace(
                book.snapshot, epoch=self._new_epoch(market_id), reset=False
            )
            self.books.markets[market_id] = type(book)(fresh)
            step.batch.snapshots[market_id] = fresh
            step.publications.append(
                (self._route(fresh.sport, fresh.event_id), protocol.encode(fresh))
            )
        for event_id, state in self.books.events.items():
            step.batch.events[event_id] = state
            step.publications.append((self._route(state.sport, event_id), protocol.encode(state)))
        return step

    def _emit(self, step: Step, output: Snapshot | Delta | EventState) -> None:
        payload = protocol.encode(output)
        retention = self.retention
        if isinstance(output, EventState):
            step.batch.events[output.event_id] = output
            step.publications.append((self._route(output.sport, output.event_id), payload))
            if retention is not None:
                self._forgotten.setdefault(output.event_id, set())
                retention.event(output.event_id, output.phase == "ended", self._now)
            if self._ttl_ms and output.phase == "ended":
                self._expire_event(step, output.event_id)
            return
        market_id = output.market_id
        book = self.books.markets[market_id].snapshot
        step.batch.snapshots[market_id] = book
        if retention is not None:
            retention.market(market_id, book.status in FINAL_MARKET_STATES, self._now)
        if self._ttl_ms:
            event = self.books.events.get(book.event_id)
            if event is not None and event.phase == "ended":
                step.batch.expiring_markets.add(market_id)
                step.batch.ttl_ms = self._ttl_ms
        if type(output) is Delta:
            step.batch.history.append((market_id, output.seq, payload))
        step.publications.append((self._route(book.sport, book.event_id), payload))
        step.deltas.append((market_id, payload))

    def _route(self, sport: str, event_id: str) -> tuple[str]:
        routes = self._routes.get(event_id)
        if routes is None:
            routes = self._routes[event_id] = (route(sport, event_id),)
        return routes

    def _expire_event(self, step: Step, event_id: str) -> None:
        """The event ended: its keys, and those of every market of it known here (held
        or forgotten), expire after the TTL, in the step that ended it."""
        batch = step.batch
        batch.ttl_ms = self._ttl_ms
        batch.expiring_events.add(event_id)
        batch.expiring_markets.update(
            m for m, b in self.books.markets.items() if b.snapshot.event_id == event_id
        )
        batch.expiring_markets.update(self._forgotten.get(event_id, ()))


def _wanted(forgotten: dict[str, set[str]], message: FeedMessage) -> bool:
    """Whether ``message`` needs books from storage first: its event is not known here,
    or its market was forgotten."""
    ids = forgotten.get(message.event_id)
    if ids is None:
        return True
    return bool(ids) and not isinstance(message, FeedEvent) and message.market_id in ids


class Publisher(Protocol):
    async def publish(self, channels: Sequence[str], payload: bytes) -> None: ...


async def commit_step(
    step: Step, store: Store, broker: Publisher, *, sent: asyncio.Event | None = None
) -> None:
    """Store, then publish; in one atomic step when the store can publish on the broker's
    server (Redis), so a crash never leaves stored deltas unannounced. Otherwise a crash
    between the two loses only publications, which gateways heal from storage by
    ``seq``. A crash before the store is written replays the records from the offsets
    the store last recorded.

    ``sent``, when given, is set as soon as the store has the writes on their way (a
    :class:`SignallingStore`), or when this returns: the caller may apply the next
    records meanwhile."""
    try:
        if isinstance(store, PublishingStore) and store.shares_server_with(broker):
            if sent is not None and isinstance(store, SignallingStore):
                await store.write_and_publish(step.batch, step.publications, sent=sent)
            else:
                await store.write_and_publish(step.batch, step.publications)
            return
        if step.batch:
            await store.write(step.batch)
        for channels, payload in step.publications:
            await broker.publish(channels, payload)
    finally:
        if sent is not None:
            sent.set()


@runtime_checkable
class SignallingStore(Protocol):
    """A :class:`~channels.store.PublishingStore` that says when a write is on its way
    (:class:`~channels.redis_store.RedisStore`)."""

    signals_sent: bool

    async def write_and_publish(
        self,
        batch: Batch,
        publications: Sequence[tuple[Sequence[str], bytes]],
        *,
        sent: asyncio.Event | None = None,
    ) -> None: ...
