"""Sharded pub/sub on a real Redis Cluster (three masters, three replicas, started by
``scripts/services.sh up cluster``): routes spread over the masters, one reader per
master, each message received once; a killed master's channels move to the promoted
replica and the subscription resyncs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from channels.broker import Subscription
from channels.names import routes_for_lobby
from channels.redis_cluster import RedisClusterBroker
from tests.integration.procs import services

pytestmark = pytest.mark.integration

CLUSTER = "redis-cluster.sh"
WAIT = 30.0


@pytest.fixture
async def broker(cluster_url: str) -> AsyncIterator[RedisClusterBroker]:
    broker = await RedisClusterBroker.connect(
        cluster_url, prefix=f"oddstream-test:{uuid.uuid4().hex}:", backoff_max=0.5
    )
    try:
        yield broker
    finally:
        await broker.close()


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()
        self.resynced = asyncio.Event()

    def on_message(self, channel: str, payload: bytes) -> None:
        self.got.append((channel, payload))
        self.changed.set()

    def on_resync(self) -> None:
        self.resynced.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()


async def every_football_route(
    broker: RedisClusterBroker,
) -> tuple[Inbox, Subscription, tuple[str, ...]]:
    """A subscription holding the 16 routes of a sport's lobby, and its inbox."""
    inbox = Inbox()
    sub = await broker.subscription(inbox.on_message, inbox.on_resync)
    routes = routes_for_lobby("football")
    for r in routes:
        await sub.subscribe(r)
    return inbox, sub, routes


async def test_routes_spread_over_the_masters_and_each_message_arrives_once(
    broker: RedisClusterBroker,
) -> None:
    inbox, sub, routes = await every_football_route(broker)
    assert len(sub.readers) == 3, "one reader per master"  # type: ignore[attr-defined]
    for n, r in enumerate(routes):
        await broker.publish([r], b"%d" % n)
    await inbox.until(len(routes))
    assert sorted(inbox.got) == sorted((r, b"%d" % n) for n, r in enumerate(routes))
    await sub.unsubscribe(routes[0])
    await broker.publish([routes[0]], b"not wanted")
    await broker.publish([routes[1]], b"wanted")
    await inbox.until(len(routes) + 1)
    assert inbox.got[-1] == (routes[1], b"wanted")


async def test_a_killed_masters_channels_move_to_the_promoted_replica(
    broker: RedisClusterBroker,
) -> None:
    inbox, sub, routes = await every_football_route(broker)
    victim = broker.owner(routes[0])
    moving = [r for r in routes if broker.owner(r) == victim]
    services("kill", victim.rpartition(":")[2], script=CLUSTER)
    try:
        async with asyncio.timeout(WAIT):
            await inbox.resynced.wait()
        assert victim not in sub.readers  # type: ignore[attr-defined]
        assert {broker.owner(r) for r in moving} != {victim}
        for r in moving:
            await broker.publish([r], b"after")
        await inbox.until(len(moving))
        assert sorted(inbox.got) == sorted((r, b"after") for r in moving)
    finally:
        services("start", victim.rpartition(":")[2], script=CLUSTER)
        services("up", script=CLUSTER)  # Back to three masters, each with a replica.
