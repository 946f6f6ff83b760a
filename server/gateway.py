"""A gateway node: the relay (broker -> local books -> hub), storage for REST, settings,
and the sessions it serves. Transports and routes get everything from here."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgspec

from channels.broker import Broker
from channels.frame import Frame
from channels.hub import Hub
from channels.relay import Relay
from channels.store import Store
from protocol import Heartbeat
from server.outbox import Outbox
from server.session import Session
from server.settings import Settings

log = logging.getLogger(__name__)


class GatewayStats(msgspec.Struct):
    connections: int = 0
    connections_total: int = 0
    slow_consumer_closes: int = 0
    protocol_errors: int = 0


class Gateway:
    def __init__(self, settings: Settings, broker: Broker, store: Store):
        self.settings = settings
        self.store = store
        self.hub = Hub()
        self.relay = Relay(broker, store, self.hub)
        self.stats = GatewayStats()
        self.ready = False
        self.draining = False
        self.sessions: set[Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        await self.relay.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.relay.close()

    def open_session(self) -> Session:
        self.stats.connections += 1
        self.stats.connections_total += 1
        session = Session(
            self.relay,
            self.store,
            Outbox(self.settings.queue_frames),
            max_subscriptions=self.settings.max_subscriptions,
        )
        self.sessions.add(session)
        self._idle.clear()
        return session

    async def close_session(self, session: Session) -> None:
        if not session.closed:
            self.stats.connections -= 1
            self.sessions.discard(session)
            if not self.sessions:
                self._idle.set()
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

    @staticmethod
    def heartbeat() -> Frame:
        return Frame(Heartbeat(ts=time.time_ns() // 1_000_000))
