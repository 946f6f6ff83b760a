"""Snapshot and history storage: written by book processors, read by gateways.

The processor writes one :class:`Batch` per step, atomically, *before* publishing the
batch's messages; so any message a gateway receives is already in storage, and a gateway
healing a gap always finds what it missed (unless it fell out of the history window).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec

from channels.fencing import admit
from protocol import EventState, MarketStatus, Snapshot


class MarketSummary(msgspec.Struct, frozen=True):
    """One row of ``GET /v1/markets``."""

    market_id: str
    event_id: str
    sport: str
    kind: str
    name: str
    status: MarketStatus
    main: bool
    seq: int
    epoch: str
    ts: int

    @classmethod
    def of(cls, s: Snapshot) -> MarketSummary:
        return cls(
            s.market_id, s.event_id, s.sport, s.kind, s.name, s.status, s.main, s.seq, s.epoch, s.ts
        )


@dataclass(slots=True)
class Batch:
    """What one processing step changed. ``history`` holds (market_id, seq, payload) of
    every delta in seq order; ``offsets`` maps (topic, partition) to the next offset to
    consume, i.e. what the snapshots reflect."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    history: list[tuple[str, int, bytes]] = field(default_factory=list)
    events: dict[str, EventState] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    """Kafka partition of each event written (its key's partition), for restore."""
    fence: dict[int, int] = field(default_factory=dict)
    """The writer's fencing token per partition it owns (:mod:`channels.fencing`): the
    write raises :class:`~channels.fencing.FencedError` if storage holds a higher one.
    Empty: not fenced (a writer that claims no partitions)."""
    outbox: dict[int, bytes] = field(default_factory=dict)
    """Per partition, an entry appended to its outbox (``feeds.transactions``: what the
    ``deltas`` topic must get); storage keeps the last :data:`OUTBOX_KEEP`."""
    expiring_markets: set[str] = field(default_factory=set)
    expiring_events: set[str] = field(default_factory=set)
    """Markets and events of ended events whose keys expire ``ttl_ms`` after this write
    (a store without expiry ignores them)."""
    ttl_ms: int = 0

    def __bool__(self) -> bool:
        return bool(self.snapshots or self.history or self.events or self.offsets or self.outbox)


OUTBOX_KEEP = 8
"""Outbox entries kept per partition: the steps stored but maybe not on the topic yet. At
most three feed steps are in a processor's pipeline (``feeds.steps``: the back-pressure is
waited for before a step is applied), and a staleness step stores past a stuck send only
when it suspends markets (once per outage); eight leaves room for both."""


class StoreError(Exception):
    """Storage is unreachable or failed; retriable."""

    retriable = True


class Store(Protocol):
    async def write(self, batch: Batch) -> None:
        """Apply a batch atomically: afterwards readers see all of it or, on error, none.
        Raises :class:`~channels.fencing.FencedError` (nothing written) when the batch's
        fence is older than storage's."""

    async def claim(self, partition: int) -> int:
        """Take a partition over: a fencing token higher than any given for it before
        (:mod:`channels.fencing`). Claim *before* reading the partition's books, so a
        previous owner's write is either refused or read."""

    async def snapshot(self, market_id: str) -> Snapshot | None: ...

    async def outbox(self, partition: int) -> list[bytes]:
        """The partition's last outbox entries, oldest first."""

    async def snapshots(self, market_ids: Iterable[str]) -> list[Snapshot]:
        """Snapshots of the markets that exist, in the order asked."""

    async def history(self, market_id: str, epoch: str, after_seq: int) -> list[bytes] | None:
        """Encoded deltas ``after_seq + 1 ...`` up to the latest, in order; ``[]`` when
        ``after_seq`` is the latest; ``None`` when they cannot all be given (epoch changed,
        history trimmed, market unknown): the caller must take a snapshot instead."""

    async def event(self, event_id: str) -> EventState | None: ...

    async def events(self, sport: str | None = None) -> list[EventState]: ...

    async def market_ids(self, event_id: str) -> list[str]:
        """Markets of one event (empty when the event is unknown)."""

    async def lobby(self, sport: str) -> list[str]:
        """Main markets of every event of a sport."""

    async def summaries(self, event_id: str | None = None) -> list[MarketSummary]: ...

    async def offsets(self, topic: str, partition: int) -> int | None:
        """The next offset to consume for a partition, as of the last batch written."""

    async def load_partition(self, partition: int) -> tuple[list[Snapshot], list[EventState]]:
        """Snapshots and events of every event that hashes to ``partition`` (restore)."""

    async def ping(self) -> None:
        """Raise :class:`StoreError` when storage does not answer (readiness)."""

    async def close(self) -> None: ...


@runtime_checkable
class PublishingStore(Protocol):
    """A store that can publish a batch's messages in the same atomic step as it writes
    the batch (Redis: PUBLISH inside MULTI/EXEC)."""

    def shares_server_with(self, broker: object) -> bool: ...

    async def write_and_publish(
        self, batch: Batch, publications: Sequence[tuple[Sequence[str], bytes]]
    ) -> None: ...


class MemoryStore:
    """In-process store for ``oddstream dev`` and tests, with a bounded history per market."""

    def __init__(self, history_size: int = 256):
        self._history_size = history_size
        self._snapshots: dict[str, Snapshot] = {}
        self._history: dict[str, deque[tuple[int, bytes]]] = {}
        self._events: dict[str, EventState] = {}
        self._event_markets: dict[str, dict[str, None]] = {}
        self._lobby: dict[str, dict[str, None]] = {}
        self._offsets: dict[tuple[str, int], int] = {}
        self._partition_of: dict[str, int] = {}
        self._fences: dict[int, int] = {}
        self._outboxes: dict[int, deque[bytes]] = {}

    async def write(self, batch: Batch) -> None:
        self.write_now(batch)

    def write_now(self, batch: Batch) -> None:
        self._fences.update(admit(self._fences, batch.fence))
        for market_id, seq, payload in batch.history:
            hist = self._history.get(market_id)
            if hist is None:
                hist = self._history[market_id] = deque(maxlen=self._history_size)
            hist.append((seq, payload))
        for market_id, snap in batch.snapshots.items():
            old = self._snapshots.get(market_id)
            if old is not None and old.epoch != snap.epoch:
                self._history.pop(market_id, None)  # A new epoch starts a new history.
            self._snapshots[market_id] = snap
            self._event_markets.setdefault(snap.event_id, {})[market_id] = None
            if snap.main:
                self._lobby.setdefault(snap.sport, {})[market_id] = None
        self._events.update(batch.events)
        self._offsets.update(batch.offsets)
        self._partition_of.update(batch.partitions)
        for partition, entry in batch.outbox.items():
            box = self._outboxes.get(partition)
            if box is None:
                box = self._outboxes[partition] = deque(maxlen=OUTBOX_KEEP)
            box.append(entry)

    async def claim(self, partition: int) -> int:
        token = self._fences[partition] = self._fences.get(partition, 0) + 1
        return token

    async def outbox(self, partition: int) -> list[bytes]:
        return list(self._outboxes.get(partition, ()))

    async def snapshot(self, market_id: str) -> Snapshot | None:
        return self._snapshots.get(market_id)

    async def snapshots(self, market_ids: Iterable[str]) -> list[Snapshot]:
        return [s for m in market_ids if (s := self._snapshots.get(m)) is not None]

    async def history(self, market_id: str, epoch: str, after_seq: int) -> list[bytes] | None:
        snap = self._snapshots.get(market_id)
        if snap is None or snap.epoch != epoch or after_seq > snap.seq:
            return None
        if after_seq == snap.seq:
            return []
        hist = self._history.get(market_id)
        if not hist or hist[0][0] > after_seq + 1:
            return None
        return [payload for seq, payload in hist if seq > after_seq]

    async def event(self, event_id: str) -> EventState | None:
        return self._events.get(event_id)

    async def events(self, sport: str | None = None) -> list[EventState]:
        return [e for e in self._events.values() if sport is None or e.sport == sport]

    async def market_ids(self, event_id: str) -> list[str]:
        return list(self._event_markets.get(event_id, ()))

    async def lobby(self, sport: str) -> list[str]:
        return list(self._lobby.get(sport, ()))

    async def summaries(self, event_id: str | None = None) -> list[MarketSummary]:
        ids = self._snapshots if event_id is None else self._event_markets.get(event_id, {})
        return [MarketSummary.of(self._snapshots[m]) for m in ids]

    async def offsets(self, topic: str, partition: int) -> int | None:
        return self._offsets.get((topic, partition))

    async def load_partition(self, partition: int) -> tuple[list[Snapshot], list[EventState]]:
        snaps = [
            s for s in self._snapshots.values() if self._partition_of.get(s.event_id) == partition
        ]
        events = [
            e for e in self._events.values() if self._partition_of.get(e.event_id) == partition
        ]
        return snaps, events

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
