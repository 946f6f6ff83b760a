"""A gateway node: the relay (broker -> local books -> hub), storage for REST, settings,
and the sessions it serves. Transports and routes get everything from here."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from channels.broker import Broker
from channels.conflate import ConflationStats
from channels.frame import Frame
from channels.hub import Hub
from channels.metrics import FanoutClock
from channels.relay import Relay
from channels.store import Store
from protocol import Heartbeat, Snapshot
from server.auth import Authenticator
from server.liveness import OwnerWatch
from server.outbox import Outbox
from server.resume_token import TOKEN_BUDGET, TokenCache
from server.session import MAX_CONFLATE_MS, ConnectionInfo, Quotas, Session, SessionStats
from server.settings import Settings

log = logging.getLogger(__name__)

#: Conflated snapshot frames kept for sharing between clients.
_SNAPSHOT_FRAMES = 4_096


@dataclass(frozen=True, slots=True)
class DeliveryLimits:
    """Per-connection delivery limits (see ``docs/guarantees.md``), as a gateway applies
    them: made from its :class:`Settings` by :meth:`of`, which owns their values.

    ``queue_frames``: frames queued for one client before it is closed with 4001.
    ``conflate_after_frames``: queued frames past which a client's backlog is conflated.
    ``send_timeout_s``: longest one write to a client may block before the client is
    dropped as dead (4002 on the WebSocket; the SSE stream ends).
    ``max_conflate_ms``: largest conflation interval a client may ask for.
    ``token_budget``: longest SSE resume token (characters) before a stream falls back
    to single-market tokens.
    """

    queue_frames: int
    conflate_after_frames: int
    send_timeout_s: float
    max_conflate_ms: int = MAX_CONFLATE_MS
    token_budget: int = TOKEN_BUDGET

    @classmethod
    def of(cls, settings: Settings) -> DeliveryLimits:
        """The limits of ``settings``; ``conflate_after_frames`` 0 means a quarter of
        ``queue_frames``."""
        return cls(
            queue_frames=settings.queue_frames,
            conflate_after_frames=settings.conflate_after_frames or settings.queue_frames // 4,
            send_timeout_s=settings.send_timeout_s,
        )


class GatewayStats(msgspec.Struct):
    connections: int = 0
    connections_total: int = 0
    slow_consumer_closes: int = 0
    dead_client_closes: int = 0
    """Clients dropped because a write to them stayed blocked past ``send_timeout_s``."""
    protocol_errors: int = 0
    ws_writes: int = 0
    """WebSocket writes to clients: one per client per flush, whatever it carries."""
    ws_messages: int = 0
    """Server messages those writes carried (more than the writes: coalescing)."""
    heartbeats: int = 0
    """Heartbeat frames offered to clients."""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        store: Store,
    ):
        self.settings = settings
        self.limits = DeliveryLimits.of(settings)
        self.store = store
        self.hub = Hub()
        self.fanout_clock = FanoutClock(time.monotonic, enabled=settings.metrics == "on")
        self.relay = Relay(broker, store, self.hub, clock=self.fanout_clock)
        silent_s = settings.owner_silent_ms / 1000
        self.owners = (
            OwnerWatch(broker, store, self.relay, silent_after_s=silent_s) if silent_s else None
        )
        self.stats = GatewayStats()
        self.conflation = ConflationStats()
        self._snapshot_frames: dict[str, tuple[Snapshot, Frame]] = {}
        self.tokens = TokenCache()  # SSE resume tokens shared between streams.
        self.auth = Authenticator(settings)
        self.session_stats = SessionStats()
        self.ready = False
        self.draining = False
        self.sessions: set[Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        await self.relay.start()
        if self.owners is not None:
            await self.owners.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.owners is not None:
            await self.owners.close()
        await self.relay.close()

    def open_session(
        self, waker: Callable[[], None] | None = None, info: ConnectionInfo | None = None
    ) -> Session:
        """A new client session; ``waker`` is called when its outbox has frames (a
        transport without a task per connection), else the outbox wakes an awaiting
        writer. ``info``: what the transport knows of the connection (credentials)."""
        self.stats.connections += 1
        self.stats.connections_total += 1
        limits = self.limits
        outbox = Outbox(
            limits.queue_frames,
            soft_limit=limits.conflate_after_frames,
            book_of=self.relay.current,
            snapshot_frame=self._snapshot_frame,
            stats=self.conflation,
            waker=waker,
        )
        settings = self.settings
        quotas = Quotas(
            max_subscriptions=settings.max_subscriptions,
            max_conflate_ms=limits.max_conflate_ms,
            max_resume_markets=settings.max_resume_markets,
            command_rate=settings.command_rate,
            command_burst=settings.command_burst,
            rate_limit_close_after=settings.rate_limit_close_after,
        )
        session = Session(
            self.relay,
            self.store,
            outbox,
            quotas=quotas,
            auth=self.auth,
            info=info,
            stats=self.session_stats,
        )
        self.sessions.add(session)
        self._idle.clear()
        return session

    def forget_session(self, session: Session) -> None:
        """Stop counting ``session`` as connected (the synchronous half of
        :meth:`close_session`, for transports that close from a callback)."""
        if session in self.sessions:
            self.stats.connections -= 1
            self.sessions.discard(session)
            if not self.sessions:
                self._idle.set()

    async def close_session(self, session: Session) -> None:
        self.forget_session(session)
        await session.close()

    async def drain(self, deadline_s: float, batches: int = 10) -> None:
        """Graceful drain (SIGTERM): refuse new clients (``/readyz`` turns 503 so the load
        balancer stops sending them), then send every client a ``reconnect`` with its
        positions and close it, in jittered batches spread over most of ``deadline_s`` so
        the fleet does not reconnect all at once. Returns when every client is gone or the
        deadline passed."""
        self.draining = True
        log.info("draining %d connections within %.1fs", len(self.sessions), deadline_s)
        sessions = list(self.sessions)
        random.shuffle(sessions)
        spread = deadline_s * 0.5
        size = max(1, -(-len(sessions) // batches))
        for start in range(0, len(sessions), size):
            for session in sessions[start : start + size]:
                if not session.closed:
                    session.drain("draining", after_ms=random.randint(0, int(spread * 1000)))
            if start + size < len(sessions):
                await asyncio.sleep(spread / batches)  # Pacing the batches, by design.
        try:
            async with asyncio.timeout(max(0.1, deadline_s - spread)):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain deadline passed with %d connections left", len(self.sessions))

    def _snapshot_frame(self, book: Snapshot) -> Frame:
        """The frame of a conflated snapshot (marked ``conflated``), shared by every
        client conflated to the same book (encode once): the books come from the relay,
        which makes one object per version of a market, so the last frame made of a
        market is reused while its book is the same object."""
        cached = self._snapshot_frames.get(book.market_id)
        if cached is not None and cached[0] is book:
            return cached[1]
        frame = Frame(msgspec.structs.replace(book, conflated=True))
        frames = self._snapshot_frames
        if len(frames) > 2 * self.relay.sizes()["markets"] + 64:
            # Markets the relay forgot (no one watches them) go: the cache follows what
            # is watched, not the whole day's markets. A prune leaves at most the
            # watched markets, so the next one comes after as many inserts again.
            for market_id in [m for m in frames if self.relay.current(m) is None]:
                del frames[market_id]
        if len(frames) >= _SNAPSHOT_FRAMES:
            frames.clear()  # Bounded; a miss only costs an encode.
        frames[book.market_id] = (book, frame)
        return frame

    @staticmethod
    def heartbeat() -> Frame:
        return Frame(Heartbeat(ts=time.time_ns() // 1_000_000))
