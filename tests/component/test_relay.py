"""The relay heals what pub/sub loses: gaps from history, else a reset snapshot; and it
resyncs after a reconnect. Memory broker with a switch that drops messages, as Redis
pub/sub does around a reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

import protocol
from channels.broker import MemoryBroker, MessageHandler, ResyncHandler, Subscription
from channels.frame import Frame
from channels.hub import Hub
from channels.names import market_channel, route
from channels.relay import Relay
from channels.store import MemoryStore
from tests.component.stack import T0, Books, Feed, event, match_result, price_walk

M1 = "fb-1:1x2"
ROUTE = route("football", "fb-1")
"""The one route M1's messages are published on."""


class LossyBroker(MemoryBroker):
    """Drops every publication while ``dropping`` is set; remembers the resync hook."""

    def __init__(self) -> None:
        super().__init__()
        self.dropping = False
        self.resync: ResyncHandler | None = None

    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        if not self.dropping:
            self.publish_now(channels, payload)

    async def subscription(
        self, on_message: MessageHandler, on_resync: ResyncHandler
    ) -> Subscription:
        self.resync = on_resync
        return await super().subscription(on_message, on_resync)


class Collector:
    """A hub subscriber that rebuilds books and records every frame, in order."""

    def __init__(self) -> None:
        self.books = Books()
        self.changed = asyncio.Event()
        self.resets = 0

    def offer(self, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, protocol.Snapshot) and message.reset:
            self.resets += 1
        self.books.take(message)
        self.changed.set()

    async def until(self, market_id: str, seq: int) -> None:
        async with asyncio.timeout(5):
            while self.books.at(market_id) < seq:
                self.changed.clear()
                await self.changed.wait()


async def setup(history_size: int = 256) -> tuple[Feed, Relay, Collector, LossyBroker]:
    store = MemoryStore(history_size=history_size)
    broker = LossyBroker()
    feed = Feed(store, broker)
    relay = Relay(broker, store, Hub())
    await relay.start()
    await feed.send(event(), match_result())
    return feed, relay, await watch(relay, M1), broker


async def watch(relay: Relay, market_id: str) -> Collector:
    """A collector attached to ``market_id`` (held and loaded first), its snapshot taken."""
    await relay.acquire(market_channel(market_id))
    await relay.ensure([market_id])
    sub = Collector()
    frame = relay.attach(market_id, sub, "m")
    assert frame is not None
    sub.offer(frame)
    return sub


async def test_gap_is_healed_from_history_before_anything_is_passed_on() -> None:
    feed, relay, sub, broker = await setup()
    await feed.send(*price_walk(M1, 3, T0))
    broker.dropping = True
    await feed.send(*price_walk(M1, 4, T0 + 10))  # Lost on the way: seq 5-8.
    broker.dropping = False
    await feed.send(*price_walk(M1, 2, T0 + 20))  # seq 9 reveals the gap.
    await sub.until(M1, 10)
    assert sub.books.seqs[M1] == list(range(1, 11))
    assert sub.books.markets[M1] == feed.book(M1)
    assert (relay.stats.gaps, relay.stats.healed_from_history, sub.resets) == (1, 1, 0)
    await relay.close()


async def test_gap_beyond_history_heals_with_a_reset_snapshot() -> None:
    feed, relay, sub, broker = await setup(history_size=2)
    broker.dropping = True
    await feed.send(*price_walk(M1, 6, T0))
    broker.dropping = False
    await feed.send(*price_walk(M1, 1, T0 + 20))
    await sub.until(M1, 8)
    assert sub.resets == 1
    assert relay.stats.healed_from_snapshot == 1
    assert msgspec.structs.replace(sub.books.markets[M1], reset=False) == feed.book(M1)
    await relay.close()


async def test_resync_after_reconnect_catches_up_a_quiet_market() -> None:
    feed, relay, sub, broker = await setup()
    broker.dropping = True
    await feed.send(*price_walk(M1, 3, T0))  # Lost, and nothing follows to reveal it.
    broker.dropping = False
    assert broker.resync is not None
    broker.resync()  # What the Redis broker calls after re-subscribing.
    await sub.until(M1, 4)
    assert sub.books.seqs[M1] == [1, 2, 3, 4]
    assert sub.books.markets[M1] == feed.book(M1)
    await relay.close()


async def test_duplicates_are_dropped() -> None:
    feed, relay, sub, broker = await setup()
    await feed.send(*price_walk(M1, 2, T0))
    payload = protocol.encode(feed.processor.books.markets[M1].snapshot)
    broker.publish_now([ROUTE], payload)  # A replayed old message.
    await sub.until(M1, 3)
    assert sub.books.seqs[M1] == [1, 2, 3]
    assert relay.stats.duplicates == 1
    await relay.close()


async def test_a_delta_of_a_foreign_epoch_is_dropped_after_one_heal() -> None:
    feed, relay, sub, broker = await setup()
    current = feed.book(M1)
    stray = protocol.Delta(
        market_id=M1, event_id=current.event_id, seq=current.seq + 5, epoch="gone", ts=T0
    )
    broker.publish_now([ROUTE], protocol.encode(stray))
    await feed.send(*price_walk(M1, 2, T0 + 10))
    await sub.until(M1, current.seq + 2)
    assert relay.stats.foreign_epoch == 1
    assert relay.stats.healed_from_history == 1, "healed once, not in a loop"
    assert sub.books.markets[M1] == feed.book(M1)
    await relay.close()
