"""A gateway node: the relay (broker -> local books -> hub), storage for REST, settings,
and the sessions it serves. Transports and routes get everything from here."""

from __future__ import annotations

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

    async def start(self) -> None:
        await self.relay.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.relay.close()

    def open_session(self) -> Session:
        self.stats.connections += 1
        self.stats.connections_total += 1
        return Session(
            self.relay,
            self.store,
            Outbox(self.settings.queue_frames),
            max_subscriptions=self.settings.max_subscriptions,
        )

    async def close_session(self, session: Session) -> None:
        if not session.closed:
            self.stats.connections -= 1
            await session.close()

    @staticmethod
    def heartbeat() -> Frame:
        return Frame(Heartbeat(ts=time.time_ns() // 1_000_000))
