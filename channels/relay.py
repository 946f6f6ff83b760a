"""The relay: a gateway node's view of the markets its clients watch.

It owns the node's broker subscription, keeps one local book per watched market (kept
current by the deltas it receives), checks every message's ``seq`` and ``epoch``, heals
gaps from storage *before* passing anything on, and fans frames out through the hub.

Ordering rules (the heart of guarantees 2 and 4):

* A channel is subscribed *before* the snapshot is fetched, and deltas that arrive while
  loading are buffered, then applied only if newer than the snapshot.
* A market's frames reach the hub strictly in ``seq`` order; a duplicate (``seq`` already
  applied) is dropped; a gap or a foreign epoch suspends the market (later messages are
  buffered) until history or a fresh snapshot fills it. A snapshot that replaces a stream
  clients cannot continue is sent to them with ``reset: true``.
* Everything that touches an entry runs on the event loop without awaiting in between,
  so a session can attach to a market and take its snapshot atomically.

Interest and routes (``docs/deployment.md``, "Scaling Redis"): sessions hold *channels*
(a market, an event, a lobby); each message is published once, on its event's *route*,
and the relay holds each route once for every channel that needs it, so the node
receives each message once. A route also brings messages no client here wants: they are
dropped after decoding (:meth:`Relay._on_message`).

* A market whose book processor went silent (:meth:`Relay.suspend`, driven by
  :mod:`server.liveness`) is shown suspended ``feed_stale`` at the same ``seq``; its next
  message, or :meth:`Relay.lift`, first sends its real book again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Sequence
from enum import Enum
from typing import Any

import msgspec

import protocol
from channels.arrival import Arrival
from channels.broker import Broker, Subscription
from channels.frame import Frame
from channels.hub import Hub, Subscriber
from channels.metrics import FanoutClock
from channels.names import (
    event_channel,
    lobby_channel,
    route,
    routes_for_lobby,
    split_channel,
    sport_of_route,
)
from channels.store import Store
from protocol import FINAL_MARKET_STATES, ApplyError, Delta, EventState, Snapshot

log = logging.getLogger(__name__)

#: The reason a gateway shows a market suspended with while its owner is silent: the
#: processors' own staleness reason, which every client handles (docs/protocol.md).
OWNER_SILENT = "feed_stale"


class UnknownMarket(Exception):
    def __init__(self, market_ids: list[str]):
        super().__init__(f"unknown market(s): {', '.join(market_ids)}")
        self.market_ids = market_ids


class _State(Enum):
    LOADING = 1
    READY = 2
    HEALING = 3


class _Entry:
    __slots__ = ("frame", "loaded", "pending", "retiring", "snapshot", "state", "suspended")

    def __init__(self) -> None:
        self.state = _State.LOADING
        self.snapshot: Snapshot | None = None
        self.frame: Frame | None = None  # Snapshot frame of the current version, shared.
        # The frame of this gateway's owner suspension of the current version, if any.
        self.suspended: Frame | None = None
        self.pending: list[tuple[Snapshot | Delta, bytes]] = []
        self.loaded: asyncio.Event = asyncio.Event()
        self.retiring = False
        """Its event ended: it leaves the lobby once settled or voided."""


class RelayStats(msgspec.Struct):
    received: int = 0
    duplicates: int = 0
    gaps: int = 0
    healed_from_history: int = 0
    healed_from_snapshot: int = 0
    resyncs: int = 0
    pending_overflows: int = 0
    foreign_epoch: int = 0
    bad_envelopes: int = 0


class Relay:
    """Broker -> local books -> hub, for one gateway node.

    ``max_pending`` bounds the messages buffered per market while it loads or heals; past
    it the buffer is dropped and the market is healed from a snapshot instead.
    """

    def __init__(
        self,
        broker: Broker,
        store: Store,
        hub: Hub,
        *,
        max_pending: int = 1024,
        retry_delay: float = 0.2,
        clock: FanoutClock | None = None,
    ):
        self._broker = broker
        self._store = store
        self.hub = hub
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._entries: dict[str, _Entry] = {}
        self._events: dict[str, EventState] = {}
        self._event_frames: dict[str, Frame] = {}
        self._channels: dict[str, tuple[int, tuple[str, ...]]] = {}
        """Per held channel: its holders, and the routes it holds."""
        self._routes: dict[str, int] = {}
        """Per subscribed route: the channels holding it."""
        self._channel_lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = RelayStats()
        self._clock = clock
        self._received = 0.0
        """Monotonic receive time of the stamped message being handled (0: none)."""

    async def start(self) -> None:
        self._sub = await self._broker.subscription(self._on_message, self._on_resync)

    async def close(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            await self._sub.close()
            self._sub = None

    # -- channels ------------------------------------------------------------------------------

    async def acquire(self, channel: str) -> None:
        """Hold a channel (:mod:`channels.names`): the first holder subscribes the routes
        carrying it. Call before loading anything the channel carries. A market or event
        storage does not know holds no route (loading it then finds it unknown). Raises
        :class:`~channels.broker.BrokerError` or :class:`~channels.store.StoreError`
        (nothing is held then)."""
        async with self._channel_lock:
            count, routes = self._channels.get(channel, (0, ()))
            if count == 0:
                assert self._sub is not None, "Relay.start() was not awaited"
                routes = await self._routes_of(channel)
                subscribed = []
                try:
                    for r in routes:
                        if r not in self._routes:
                            await self._sub.subscribe(r)
                        self._routes[r] = self._routes.get(r, 0) + 1
                        subscribed.append(r)
                except BaseException:
                    await self._drop_routes(subscribed)
                    raise
            self._channels[channel] = (count + 1, routes)

    async def release(self, channel: str) -> None:
        async with self._channel_lock:
            count, routes = self._channels.get(channel, (0, ()))
            if count <= 1:
                self._channels.pop(channel, None)
                if channel.startswith("e:"):
                    self._forget_event(channel[2:])
                elif channel.startswith("l:"):
                    sport = channel[2:]
                    for event_id in [e for e, s in self._events.items() if s.sport == sport]:
                        self._forget_event(event_id)
                if count == 1:
                    await self._drop_routes(routes)
            else:
                self._channels[channel] = (count - 1, routes)

    async def _drop_routes(self, routes: Iterable[str]) -> None:
        for r in routes:
            left = self._routes.pop(r, 0) - 1
            if left > 0:
                self._routes[r] = left
            elif self._sub is not None:
                await self._sub.unsubscribe(r)

    async def _routes_of(self, channel: str) -> tuple[str, ...]:
        kind, name = split_channel(channel)
        if kind == "l":
            return routes_for_lobby(name)
        if kind == "e":
            state = self._events.get(name) or await self._store.event(name)
            return () if state is None else (route(state.sport, name),)
        entry = self._entries.get(name)
        snap = entry.snapshot if entry is not None else None
        if snap is None:
            found = await self._store.snapshots([name])
            snap = found[0] if found else None
        return () if snap is None else (route(snap.sport, snap.event_id),)

    def holds(self, channel: str) -> bool:
        return channel in self._channels

    def sizes(self) -> dict[str, int]:
        """How many markets (local books), event states and broker channels are held,
        and markets with local subscribers: each stays bounded through a day (see
        docs/guarantees.md, "Bounded memory through a match day")."""
        return {
            "markets": len(self._entries),
            "events": len(self._events),
            "channels": len(self._channels),
            "hub_markets": self.hub.market_count,
            "hub_reason_sets": self.hub.reason_sets,
        }

    # -- markets -------------------------------------------------------------------------------

    async def ensure(self, market_ids: Iterable[str]) -> None:
        """Make sure every market has a ready local book. The channels carrying them must
        already be held. Raises :class:`UnknownMarket` naming every market storage lacks;
        :class:`channels.store.StoreError` when storage fails."""
        ids = list(dict.fromkeys(market_ids))
        to_load = [m for m in ids if m not in self._entries]
        for m in to_load:
            self._entries[m] = _Entry()
        if to_load:
            try:
                snaps = {s.market_id: s for s in await self._store.snapshots(to_load)}
            except BaseException:
                for m in to_load:
                    self._abandon(m)
                raise
            missing = []
            for m in to_load:
                snap = snaps.get(m)
                if snap is None:
                    missing.append(m)
                    self._abandon(m)
                else:
                    self._loaded(m, snap)
            if missing:
                raise UnknownMarket(missing)
        for m in ids:
            entry = self._entries.get(m)
            if entry is None:
                raise UnknownMarket([m])
            if entry.state is _State.LOADING:
                await entry.loaded.wait()
                if m not in self._entries:
                    raise UnknownMarket([m])

    def attach(self, market_id: str, sub: Subscriber, reason: str) -> Frame | None:
        """Attach ``sub`` to a ready market. Returns the snapshot frame to send first when
        ``sub`` was not attached before, else None. Synchronous, so no delta can slip
        between the snapshot and the attachment."""
        entry = self._entries[market_id]
        fresh = self.hub.attach(market_id, sub, reason)
        if not fresh:
            return None
        return self._snapshot_frame(entry)

    def suspend(self, market_ids: Iterable[str]) -> list[str]:
        """Show the ready, open markets among ``market_ids`` suspended with reason
        ``feed_stale`` (their owner went silent): a snapshot of the book at the same
        ``seq`` to their subscribers and to those who attach meanwhile. Nothing is
        stored. Returns the markets suspended."""
        out = []
        for m in market_ids:
            entry = self._entries.get(m)
            if entry is None or entry.state is not _State.READY or entry.suspended is not None:
                continue
            snap = entry.snapshot
            if snap is None or snap.status != "open":
                continue
            shown = msgspec.structs.replace(snap, status="suspended", reason=OWNER_SILENT)
            if shown.crc is not None:
                shown = msgspec.structs.replace(shown, crc=protocol.checksum(shown))
            entry.suspended = Frame(shown)
            self.hub.fanout(m, entry.suspended)
            out.append(m)
        return out

    def lift(self, market_ids: Iterable[str]) -> None:
        """Take back :meth:`suspend`: the real book, same ``seq``, to the subscribers of
        each market still suspended."""
        for m in market_ids:
            entry = self._entries.get(m)
            if entry is not None and entry.suspended is not None:
                self._lift(m, entry)

    def _lift(self, market_id: str, entry: _Entry) -> None:
        entry.suspended = None
        self.hub.fanout(market_id, self._snapshot_frame(entry))

    def current(self, market_id: str) -> Snapshot | None:
        """The local book of a watched market (None while loading or not watched)."""
        entry = self._entries.get(market_id)
        return None if entry is None else entry.snapshot

    def forget_unwatched(self, market_ids: Iterable[str]) -> None:
        """Drop the local books of markets no subscriber is attached to any more."""
        for m in market_ids:
            if not self.hub.has_subscribers(m):
                entry = self._entries.get(m)
                if entry is not None and entry.state is not _State.LOADING:
                    del self._entries[m]

    def event_of(self, market_id: str) -> str | None:
        """The event of a market with a local book."""
        entry = self._entries.get(market_id)
        return None if entry is None or entry.snapshot is None else entry.snapshot.event_id

    def markets_of_event(self, event_id: str) -> list[str]:
        return [
            m
            for m, e in self._entries.items()
            if e.snapshot is not None and e.snapshot.event_id == event_id
        ]

    def markets_of_lobby(self, sport: str) -> list[str]:
        return [
            m
            for m, e in self._entries.items()
            if e.snapshot is not None and e.snapshot.main and e.snapshot.sport == sport
        ]

    # -- events --------------------------------------------------------------------------------

    async def event(self, event_id: str) -> Frame | None:
        """The latest event-state frame, from the local cache or storage."""
        frame = self._event_frames.get(event_id)
        if frame is not None:
            return frame
        state = await self._store.event(event_id)
        if state is None:
            return None
        return self._remember_event(state)

    def event_frame(self, state: EventState) -> Frame:
        """The frame of the newest of ``state`` and the cached state of its event."""
        return self._remember_event(state)

    def _retire(self, state: EventState) -> None:
        """An ended event leaves its sport's lobby: lobby watchers, who got its last state,
        are detached from each of its markets once it is settled or voided (now, or when
        its result comes), and what no one watches any more is dropped (a lobby watched
        all day would otherwise hold every market of the day). Those who asked for the
        event or a market keep it."""
        for market_id in self.markets_of_event(state.event_id):
            entry = self._entries[market_id]
            entry.retiring = True
            self._leave_lobby(market_id, entry)
        self._forget_event(state.event_id)

    def _leave_lobby(self, market_id: str, entry: _Entry) -> None:
        """Detach lobby watchers from a retiring market once it is final."""
        snap = entry.snapshot
        if snap is not None and snap.status in FINAL_MARKET_STATES:
            entry.retiring = False
            if self.hub.release_market(market_id, lobby_channel(snap.sport)):
                self.forget_unwatched([market_id])

    def _forget_event(self, event_id: str) -> None:
        """Drop an event's cached state unless its channel is still held (read again
        from storage when next wanted)."""
        if not self.holds(event_channel(event_id)):
            self._events.pop(event_id, None)
            self._event_frames.pop(event_id, None)

    def _remember_event(self, state: EventState, payload: bytes | None = None) -> Frame:
        known = self._events.get(state.event_id)
        if known is not None and known.seq >= state.seq:
            return self._event_frames[state.event_id]
        self._events[state.event_id] = state
        frame = self._event_frames[state.event_id] = Frame(state, payload)
        return frame

    # -- incoming ------------------------------------------------------------------------------

    def _on_message(self, channel: str, payload: bytes) -> None:
        """A pub/sub payload: the protocol message's JSON, perhaps after an envelope's
        header line (stage stamps, ``docs/observability.md``), stripped here so every
        client gets exactly the message."""
        self.stats.received += 1
        if payload[:1] != b"~":
            self._dispatch(channel, payload)
            return
        head, _, payload = payload.partition(b"\n")
        try:
            arrival = Arrival.of(head, self._clock, self.hub)
        except ValueError:
            self.stats.bad_envelopes += 1
            arrival = None
        if arrival is None:
            self._dispatch(channel, payload)
            return
        self._received = arrival.received
        try:
            self._dispatch(channel, payload)
        finally:
            self._received = 0.0
            arrival.done()

    def _dispatch(self, channel: str, payload: bytes) -> None:
        try:
            message = protocol.decode_server(payload)
        except msgspec.DecodeError:
            log.error("undecodable message on %s: %r", channel, payload[:200])
            return
        if isinstance(message, EventState):
            known = self._events.get(message.event_id)
            if known is None and not self._wants_event(message.event_id, message.sport):
                return  # Another event of the route.
            if known is None or message.seq > known.seq:
                frame = self._remember_event(message, payload)
                self.hub.fanout_event(message.event_id, message.sport, frame)
                if message.phase == "ended":
                    self._retire(message)
            return
        if not isinstance(message, Snapshot | Delta):
            return
        entry = self._entries.get(message.market_id)
        if entry is None:
            self._unwatched_market(channel, message, payload)
            return
        if entry.state is not _State.READY:
            self._buffer(message.market_id, entry, message, payload)
            return
        self._advance(message.market_id, entry, message, payload)

    def _advance(
        self, market_id: str, entry: _Entry, message: Snapshot | Delta, payload: bytes
    ) -> None:
        current = entry.snapshot
        assert current is not None
        if isinstance(message, Snapshot):
            if message.epoch == current.epoch and message.seq <= current.seq:
                self.stats.duplicates += 1
                return
            # A new stream (new market or new epoch): it replaces what clients have.
            self._set(entry, message)
            self.hub.fanout(market_id, self._snapshot_frame(entry, reset=True))
            return
        if message.epoch == current.epoch and message.seq <= current.seq:
            self.stats.duplicates += 1
            return
        try:
            book = protocol.apply(current, message)
        except ApplyError:
            self.stats.gaps += 1
            entry.state = _State.HEALING
            entry.pending.append((message, payload))
            self._spawn(self._heal(market_id, entry))
            return
        if entry.suspended is not None:
            self._lift(market_id, entry)  # Clients apply the delta to the real book.
        self._set(entry, book)
        self.hub.fanout(market_id, Frame(message, payload, self._received))
        if entry.retiring:
            self._leave_lobby(market_id, entry)

    def _buffer(
        self, market_id: str, entry: _Entry, message: Snapshot | Delta, payload: bytes
    ) -> None:
        if len(entry.pending) >= self._max_pending:
            self.stats.pending_overflows += 1
            entry.pending.clear()  # The heal falls back to a snapshot.
            return
        entry.pending.append((message, payload))

    def _wants_event(self, event_id: str, sport: str) -> bool:
        return self.holds(event_channel(event_id)) or self.holds(lobby_channel(sport))

    def _unwatched_market(self, route: str, message: Snapshot | Delta, payload: bytes) -> None:
        """A message for a market with no local book: most often a market of another
        event of the route (dropped); else a new market of a watched event or lobby, one
        joining its lobby, or one created while a subscription was being set up."""
        event_watchers = self.hub.event_watchers(message.event_id)
        sport: str | None = None  # Set when the market is in its sport's lobby.
        if isinstance(message, Snapshot):
            sport = message.sport if message.main else None
        elif message.main is True:
            sport = sport_of_route(route)
        market_id = message.market_id
        watchers = [(s, event_channel(message.event_id)) for s in event_watchers]
        if sport is not None:
            watchers += [(s, lobby_channel(sport)) for s in self.hub.lobby_watchers(sport)]
        if isinstance(message, Snapshot) and message.seq == 1:
            # A new market. Keep it even before anyone watches, if its event or lobby
            # channel is held: a subscription being set up lists markets from storage
            # and would otherwise miss one created in between.
            covered = self.holds(event_channel(message.event_id)) or (
                sport is not None and self.holds(lobby_channel(sport))
            )
            if not watchers and not covered:
                return
            self._entries[market_id] = _Entry()
            self._loaded(market_id, message)
            for sub, reason in watchers:
                frame = self.attach(market_id, sub, reason)
                if frame is not None:
                    sub.offer(frame)
            return
        if not watchers:
            return
        # A market we have not loaded yet: load it, then attach whoever watches it.
        self._spawn(self._load_for_watchers(market_id, message.event_id))

    async def _load_for_watchers(self, market_id: str, event_id: str) -> None:
        try:
            await self.ensure([market_id])
        except UnknownMarket:
            return
        entry = self._entries[market_id]
        assert entry.snapshot is not None
        watchers = [(s, event_channel(event_id)) for s in self.hub.event_watchers(event_id)]
        if entry.snapshot.main:
            sport = entry.snapshot.sport
            watchers += [(s, lobby_channel(sport)) for s in self.hub.lobby_watchers(sport)]
        for sub, reason in watchers:
            frame = self.attach(market_id, sub, reason)
            if frame is not None:
                sub.offer(frame)
        self.forget_unwatched([market_id])

    def _loaded(self, market_id: str, snap: Snapshot) -> None:
        entry = self._entries[market_id]
        self._set(entry, snap)
        pending, entry.pending = entry.pending, []
        entry.state = _State.READY
        entry.loaded.set()
        for message, payload in pending:
            if entry.state is _State.READY:
                self._advance(market_id, entry, message, payload)
            else:
                entry.pending.append((message, payload))

    def _abandon(self, market_id: str) -> None:
        entry = self._entries.pop(market_id, None)
        if entry is not None:
            entry.loaded.set()

    def _set(self, entry: _Entry, snap: Snapshot) -> None:
        entry.snapshot = snap
        entry.frame = None
        entry.suspended = None  # A new version: the caller sends it.

    def _snapshot_frame(self, entry: _Entry, *, reset: bool = False) -> Frame:
        assert entry.snapshot is not None
        if reset:
            return Frame(protocol.as_reset(entry.snapshot))
        if entry.suspended is not None:
            return entry.suspended
        if entry.frame is None:
            entry.frame = Frame(entry.snapshot)
        return entry.frame

    # -- healing -------------------------------------------------------------------------------

    async def _heal(self, market_id: str, entry: _Entry) -> None:
        """Fill a gap from history, else from a snapshot; then replay what was buffered.
        Retries while storage fails; clients of the market receive nothing meanwhile."""
        while self._entries.get(market_id) is entry:
            try:
                await self._heal_once(market_id, entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("healing %s failed; retrying", market_id)
                await asyncio.sleep(self._retry_delay)

    async def _heal_once(self, market_id: str, entry: _Entry) -> None:
        current = entry.snapshot
        assert current is not None
        missed = None
        if entry.pending:
            missed = await self._store.history(market_id, current.epoch, current.seq)
        if missed is not None:
            self.stats.healed_from_history += 1
            replay = [(d, p) for p in missed if isinstance(d := protocol.decode_server(p), Delta)]
            self._replay(market_id, entry, replay)
            return
        snap = await self._store.snapshot(market_id)
        if snap is None:
            return
        self.stats.healed_from_snapshot += 1
        self._set(entry, snap)
        self.hub.fanout(market_id, self._snapshot_frame(entry, reset=True))
        self._replay(market_id, entry, [])

    def _replay(
        self, market_id: str, entry: _Entry, replay: Sequence[tuple[Snapshot | Delta, bytes]]
    ) -> None:
        """After a heal, apply what storage gave, then what was buffered meanwhile.

        Storage is the authority on a market's epoch (every message is stored before or
        with its publication), so a buffered message of another epoch is a leftover of a
        stream that no longer exists: it is dropped, never allowed to trigger another heal
        (which would loop, healing forever on the same message)."""
        entry.state = _State.READY
        pending, entry.pending = entry.pending, []
        for message, payload in [*replay, *pending]:
            if entry.state is not _State.READY:
                entry.pending.append((message, payload))
                continue
            assert entry.snapshot is not None
            if message.epoch != entry.snapshot.epoch:
                self.stats.foreign_epoch += 1
                continue
            self._advance(market_id, entry, message, payload)

    def _on_resync(self) -> None:
        """The broker (re)connected and may have dropped messages: compare every ready
        book with storage and heal those that fell behind."""
        self.stats.resyncs += 1
        self._spawn(self._resync())

    async def _resync(self) -> None:
        ready = [m for m, e in self._entries.items() if e.state is _State.READY]
        for snap in await self._store.snapshots(ready):
            entry = self._entries.get(snap.market_id)
            if entry is None or entry.state is not _State.READY or entry.snapshot is None:
                continue
            if snap.epoch != entry.snapshot.epoch or snap.seq > entry.snapshot.seq:
                self.stats.gaps += 1
                entry.state = _State.HEALING
                # Sentinel-free heal: with nothing pending, history fills up to the latest.
                entry.pending.append((snap, protocol.encode(snap)))
                self._spawn(self._heal(snap.market_id, entry))
        for event_id in list(self._events):
            state = await self._store.event(event_id)
            if state is not None and state.seq > self._events[event_id].seq:
                frame = self._remember_event(state)
                self.hub.fanout_event(event_id, state.sport, frame)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
