"""Owner liveness on a gateway, on a real Redis (``ODDSTREAM_REDIS``): the owner beats of
a book processor (feeds/liveness.py) stop naming one partition; the gateway's clients of
that partition's markets see them suspended ``feed_stale`` within the bound, the others
nothing; the beats return and the markets reopen; a delta that comes while a market is
suspended goes out after its real book (server/liveness.py, channels/relay.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

import protocol
from channels.frame import Frame
from channels.liveness import decode_beat
from channels.names import market_channel, owner_beat_channel, route
from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from channels.store import Batch
from feeds.liveness import OwnerBeats
from protocol import Delta, Snapshot
from server.gateway import Gateway
from server.settings import Settings
from tests.integration.test_redis import delta, snapshot

pytestmark = pytest.mark.integration

SILENT_MS = 400
BEAT_S = 0.05
#: The bound, the watch's tick (a quarter of it), and slack for a shared machine.
WITHIN_S = SILENT_MS / 1000 * 1.25 + 1.0


@dataclass
class Runner:
    """What the beats read of a book processor: the partitions it names are set here."""

    holds: frozenset[int]
    group: str = "g"
    member: str | None = "m-1"

    async def evict(self, member: str) -> bool:
        raise AssertionError("eviction is off in this test")


@dataclass(eq=False)
class Client:
    """A subscriber that keeps every frame it was offered."""

    frames: list[Frame] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.changed.set()

    async def until(self, count: int, timeout: float = WITHIN_S) -> list[Frame]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.frames


@dataclass
class Setup:
    store: RedisStore
    broker: RedisBroker
    gateway: Gateway
    runner: Runner
    clients: dict[str, Client]


@pytest.fixture
async def setup(redis_url: str) -> AsyncIterator[Setup]:
    """Markets ``a`` (event ``e0``, partition 0) and ``b`` (``e1``, partition 1) stored; a
    gateway with a client attached to each; beats naming both partitions."""
    store = await RedisStore.connect(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:")
    broker = await RedisBroker.connect(redis_url)
    gateway = Gateway(Settings(owner_silent_ms=SILENT_MS), broker, store)
    runner = Runner(frozenset({0, 1}))
    beats = None
    try:
        await store.write(
            Batch(
                snapshots={"a": snapshot("a", event="e0"), "b": snapshot("b", event="e1")},
                partitions={"e0": 0, "e1": 1},
            )
        )
        await gateway.start()
        assert gateway.owners is not None
        # Both partitions are named once before a test silences one: a beat the gateway's
        # subscription gets too (Redis writes a message to every subscriber at once).
        named = asyncio.Event()

        def on_beat(channel: str, payload: bytes) -> None:
            beat = decode_beat(payload)
            if beat is not None and beat.partitions == (0, 1):
                named.set()

        listener = await broker.subscription(on_beat, lambda: None)
        await listener.subscribe(owner_beat_channel())
        beats = asyncio.create_task(
            OwnerBeats(broker, runner, beat_s=BEAT_S, evict_after_s=None).run()
        )
        await asyncio.wait_for(named.wait(), WITHIN_S)
        await listener.close()
        clients = {}
        for m in ("a", "b"):
            await gateway.relay.acquire(market_channel(m))
            await gateway.relay.ensure([m])
            clients[m] = Client()
            first = gateway.relay.attach(m, clients[m], "m")
            assert first is not None
            clients[m].offer(first)
        yield Setup(store, broker, gateway, runner, clients)
    finally:
        if beats is not None:
            beats.cancel()
            await asyncio.wait([beats])
        await gateway.close()
        await broker.close()
        await store.close()


def book(frame: Frame) -> Snapshot:
    assert isinstance(frame.message, Snapshot), frame.message
    return frame.message


async def test_a_silent_partition_is_suspended_within_the_bound_and_reopens_with_its_beat(
    setup: Setup,
) -> None:
    a, b = setup.clients["a"], setup.clients["b"]
    setup.runner.holds = frozenset({1})
    silent_at = time.monotonic()
    suspended = book((await a.until(2))[1])
    took = time.monotonic() - silent_at
    assert (suspended.status, suspended.reason, suspended.seq) == ("suspended", "feed_stale", 1)
    assert suspended.crc is None or suspended.crc == protocol.checksum(suspended)
    assert took < WITHIN_S, took
    assert len(b.frames) == 1, "the other partition's market is untouched"
    newcomer = Client()
    joined = setup.gateway.relay.attach("a", newcomer, "m")
    assert joined is not None and book(joined).reason == "feed_stale"

    setup.runner.holds = frozenset({0, 1})
    reopened = book((await a.until(3))[2])
    assert (reopened.status, reopened.reason, reopened.seq) == ("open", None, 1)
    assert len(b.frames) == 1


async def test_a_delta_of_a_suspended_market_follows_its_real_book(setup: Setup) -> None:
    a = setup.clients["a"]
    setup.runner.holds = frozenset({1})
    await a.until(2)
    # The new owner's first delta comes before its first beat.
    change = delta("a", 2, event="e0")
    await setup.store.write(
        Batch(snapshots={"a": protocol.apply(snapshot("a", event="e0"), change)})
    )
    await setup.broker.publish((route("football", "e0"),), protocol.encode(change))
    frames = await a.until(4)
    real, then = book(frames[2]), frames[3].message
    assert (real.status, real.reason, real.seq) == ("open", None, 1)
    assert isinstance(then, Delta) and then.seq == 2
