"""One route per message, on a real Redis: a gateway's relay whose clients watch a market,
its event and its lobby receives each delta once; two deployments with two prefixes on
one Redis see none of each other's keys or messages (``docs/deployment.md``, "Scaling
Redis")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from channels.hub import Hub
from channels.names import event_channel, lobby_channel, market_channel, split_channel
from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from channels.relay import Relay
from tests.component.stack import T0, Feed, event, match_result, over_under, price_walk, status
from tests.component.test_relay import Collector
from tests.integration.conftest import HISTORY, purge

pytestmark = pytest.mark.integration

M1, M2, M3 = "fb-1:1x2", "fb-1:ou_2.5", "fb-2:1x2"
"""A main market and another of event fb-1, and the main market of fb-2 (all football)."""

Deployment = tuple[Feed[RedisStore, RedisBroker], Relay]


@pytest.fixture
async def deployments(redis_url: str) -> AsyncIterator[list[Deployment]]:
    """Two deployments on one Redis, each a processor feeding it and a gateway's relay;
    the same market ids in both."""
    made: list[Deployment] = []
    prefixes = [f"oddstream-test:{n}:{id(made)}:" for n in ("a", "b")]
    try:
        for p in prefixes:
            store = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=p)
            broker = await RedisBroker.connect(redis_url, prefix=p)
            relay = Relay(broker, store, Hub())
            made.append((Feed(store, broker), relay))
            await relay.start()
        yield made
    finally:
        for feed, relay in made:
            await relay.close()
            await feed.broker.close()
            await feed.store.close()
        for p in prefixes:
            await purge(redis_url, p)


async def watch(relay: Relay, sub: Collector, channel: str, markets: list[str]) -> None:
    """What a session does for one subscription: hold the channel, load, attach."""
    await relay.acquire(channel)
    await relay.ensure(markets)
    kind, name = split_channel(channel)
    if kind == "e":
        relay.hub.watch_event(name, sub)
    elif kind == "l":
        relay.hub.watch_lobby(name, sub)
    for m in markets:
        frame = relay.attach(m, sub, "m" if kind == "m" else channel)
        if frame is not None:
            sub.offer(frame)


async def test_a_delta_reaches_a_gateway_once_whoever_watches_it(
    deployments: list[Deployment],
) -> None:
    (feed, relay), _ = deployments
    await feed.send(event(), event("fb-2"), match_result(), over_under(), match_result("fb-2"))
    on_market, on_event, on_lobby = Collector(), Collector(), Collector()
    await watch(relay, on_market, market_channel(M1), [M1])
    await watch(relay, on_event, event_channel("fb-1"), [M1, M2])
    await watch(relay, on_lobby, lobby_channel("football"), [M1, M3])
    received = relay.stats.received

    await feed.send(
        *price_walk(M1, 20, T0),
        status(M2, T0 + 1, "suspended", "var"),
        status(M2, T0 + 2, "open"),
        *price_walk(M3, 10, T0),
    )
    for sub, market in ((on_market, M1), (on_event, M1), (on_event, M2), (on_lobby, M3)):
        await sub.until(market, feed.book(market).seq)
    assert relay.stats.received - received == 20 + 2 + 10, "each delta received once"
    assert relay.stats.duplicates == 0
    for sub, markets in ((on_market, [M1]), (on_event, [M1, M2]), (on_lobby, [M1, M3])):
        assert sub.books.markets == {m: feed.book(m) for m in markets}


async def test_two_deployments_share_a_redis_without_seeing_each_other(
    deployments: list[Deployment],
) -> None:
    (feed_a, relay_a), (feed_b, _) = deployments
    await feed_b.send(event(), match_result(), *price_walk(M1, 7, T0))
    await feed_a.send(event(), match_result())
    assert (await feed_a.store.snapshot(M1)) == feed_a.book(M1)
    assert (await feed_b.store.snapshot(M1)) == feed_b.book(M1) != feed_a.book(M1)
    on_lobby = Collector()
    await watch(relay_a, on_lobby, lobby_channel("football"), [M1])
    received = relay_a.stats.received

    await feed_b.send(*price_walk(M1, 5, T0 + 100))
    await feed_a.send(*price_walk(M1, 3, T0 + 200))
    await on_lobby.until(M1, feed_a.book(M1).seq)
    assert relay_a.stats.received - received == 3, "only its own deployment's deltas"
    assert on_lobby.books.markets == {M1: feed_a.book(M1)}
