"""The book processor: feed records in; storage, pub/sub and the deltas topic out.

:class:`Processor` is the pure core: it decodes a batch of records, applies them to the
books, and returns a :class:`Step` saying what to store, publish and dead-letter, every
message encoded exactly once. :func:`commit_step` performs a step's I/O in the order that
makes crashes safe: storage first (snapshots, history and the offsets they reflect, in
one atomic write), then publication, then the Kafka commit by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

import protocol
from channels.names import channels_for_event, channels_for_market
from channels.store import Batch, PublishingStore, Store
from feeds.book import Books, FeedRejected
from feeds.model import decode_feed
from protocol import Delta, EventState, Snapshot


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One record of a feed topic, as consumed (Kafka or the in-memory bus)."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


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


class Processor:
    """Applies feed records to the books of the partitions this process owns.

    ``skip_until`` maps (topic, partition) to the first offset not yet reflected in the
    restored books: records below it were applied before a crash or hand-over and are
    skipped, so nothing is applied twice.
    """

    def __init__(self, new_epoch: Callable[[str], str]):
        self._new_epoch = new_epoch
        self.books = Books(new_epoch)
        self.skip_until: dict[tuple[str, int], int] = {}
        self.skipped = 0

    def process(self, records: Sequence[FeedRecord]) -> Step:
        step = Step()
        batch = step.batch
        for record in records:
            tp = (record.topic, record.partition)
            if record.offset < self.skip_until.get(tp, 0):
                self.skipped += 1
                continue
            batch.offsets[tp] = record.offset + 1
            try:
                message = decode_feed(record.value)
            except msgspec.DecodeError as exc:
                step.dead_letters.append(DeadLetter(record, f"malformed: {exc}"))
                continue
            try:
                output = self.books.apply(message)
            except FeedRejected as exc:
                step.dead_letters.append(DeadLetter(record, f"{exc.reason}: {exc.message}"))
                continue
            step.applied += 1
            batch.partitions[message.event_id] = record.partition
            if output is not None:
                self._emit(step, output)
        return step

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
            channels = channels_for_market(market_id, fresh.event_id, fresh.sport, fresh.main)
            step.publications.append((channels, protocol.encode(fresh)))
        for event_id, state in self.books.events.items():
            step.batch.events[event_id] = state
            step.publications.append(
                (channels_for_event(event_id, state.sport), protocol.encode(state))
            )
        return step

    def _emit(self, step: Step, output: Snapshot | Delta | EventState) -> None:
        payload = protocol.encode(output)
        if isinstance(output, EventState):
            step.batch.events[output.event_id] = output
            step.publications.append((channels_for_event(output.event_id, output.sport), payload))
            return
        book = self.books.markets[output.market_id].snapshot
        step.batch.snapshots[output.market_id] = book
        if isinstance(output, Delta):
            step.batch.history.append((output.market_id, output.seq, payload))
        channels = channels_for_market(book.market_id, book.event_id, book.sport, book.main)
        step.publications.append((channels, payload))
        step.deltas.append((output.market_id, payload))


class Publisher(Protocol):
    async def publish(self, channels: Sequence[str], payload: bytes) -> None: ...


async def commit_step(step: Step, store: Store, broker: Publisher) -> None:
    """Store, then publish; in one atomic step when the store can publish on the broker's
    server (Redis), so a crash never leaves stored deltas unannounced. Otherwise a crash
    between the two loses only publications, which gateways heal from storage by
    ``seq``. A crash before the store is written replays the records from the offsets
    the store last recorded."""
    if isinstance(store, PublishingStore) and store.shares_server_with(broker):
        await store.write_and_publish(step.batch, step.publications)
        return
    if step.batch:
        await store.write(step.batch)
    for channels, payload in step.publications:
        await broker.publish(channels, payload)
