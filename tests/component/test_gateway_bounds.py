"""A gateway's per-market and per-event structures return to their baseline after a day's
churn: events that start and end under a lobby watched all day, clients that subscribe and
unsubscribe."""

from __future__ import annotations

from channels.broker import MemoryBroker
from channels.frame import Frame
from channels.hub import Hub
from channels.names import event_channel, lobby_channel, market_channel
from channels.relay import Relay
from channels.store import MemoryStore
from server.session import LOBBY_LINGER_MS
from tests.component.stack import (
    T0,
    Feed,
    event,
    match_result,
    over_under,
    running_stack,
    settle,
    ws_client,
)


class Sink:
    def __init__(self) -> None:
        self.frames = 0

    def offer(self, frame: Frame) -> None:
        self.frames += 1


def sizes(relay: Relay) -> dict[str, int]:
    hub = relay.hub
    return {
        "entries": len(relay._entries),
        "events": len(relay._events),
        "event_frames": len(relay._event_frames),
        "channels": len(relay._channels),
        "hub_markets": len(hub._markets),
        "hub_by_sub": len(hub._by_sub),
        "hub_events": len(hub._events),
        "hub_lobbies": len(hub._lobbies),
    }


async def test_structures_return_to_baseline_after_a_day_of_churn() -> None:
    store, broker = MemoryStore(), MemoryBroker()
    feed = Feed(store, broker)
    relay = Relay(broker, store, Hub())
    await relay.start()
    lobby = Sink()
    await relay.acquire(lobby_channel("football"))
    relay.hub.watch_lobby("football", lobby)
    baseline = sizes(relay)
    for n in range(30):
        e, ts = f"fb-{n}", T0 + n * 1000
        await feed.send(event(e, ts=ts), match_result(e, ts=ts), over_under(e, ts=ts))
        # A client follows the event and one market for a while, then leaves.
        client = Sink()
        await relay.acquire(event_channel(e))
        relay.hub.watch_event(e, client)
        await relay.acquire(market_channel(f"{e}:1x2"))
        await relay.ensure([f"{e}:1x2"])
        relay.attach(f"{e}:1x2", client, "m")
        await feed.send(event(e, ts=ts + 1, phase="live"))
        if n % 2 == 1:
            await feed.send(settle(f"{e}:1x2", ts + 2, home="winner"))
        relay.hub.unwatch_event(e, client)
        relay.forget_unwatched(relay.hub.release(client, "m"))
        await relay.release(market_channel(f"{e}:1x2"))
        await relay.release(event_channel(e))
        await feed.send(event(e, ts=ts + 3, phase="ended"))
        # A main market settled after the end: the lobby sees it settle, then leaves it.
        assert relay.hub.is_attached(f"{e}:1x2", lobby) is (n % 2 == 0)
        if n % 2 == 0:
            await feed.send(settle(f"{e}:1x2", ts + 4, home="winner"))
        assert not relay.hub.is_attached(f"{e}:1x2", lobby)
    assert lobby.frames > 60  # The lobby saw every event and its main market.
    assert sizes(relay) == baseline
    relay.hub.unwatch_lobby("football", lobby)
    await relay.release(lobby_channel("football"))
    assert sizes(relay) == dict.fromkeys(baseline, 0)
    await relay.close()


async def test_a_lobby_subscribed_late_in_the_day_lists_only_events_not_ended() -> None:
    async with running_stack() as stack:
        for n in range(20):
            e, ts = f"fb-{n}", T0 + n * 3_600_000  # An event an hour.
            await stack.feed.send(event(e, ts=ts), match_result(e, ts=ts), over_under(e, ts=ts))
            if n < 18:  # The day's earlier events are over.
                await stack.feed.send(settle(f"{e}:1x2", ts + 1, home="winner"))
                await stack.feed.send(event(e, ts=ts + 2, phase="ended"))
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "lobbies": ["football"], "id": "l"})
            await client.until_seq({"fb-18:1x2": 1, "fb-19:1x2": 1})
            assert set(client.books.markets) == {"fb-18:1x2", "fb-19:1x2"}
            assert set(client.books.events) == {"fb-18", "fb-19"}
            relay = stack.gateway.relay
            assert relay.sizes()["markets"] == 2
            assert relay.sizes()["events"] == 2


async def test_an_event_that_just_ended_is_still_in_a_lobby_subscribed_later() -> None:
    async with running_stack() as stack:
        for n in range(2):
            e = f"fb-{n}"
            await stack.feed.send(event(e, ts=T0), match_result(e, ts=T0))
        await stack.feed.send(settle("fb-0:1x2", T0 + 1, home="winner"))
        await stack.feed.send(event("fb-0", ts=T0 + 2, phase="ended"))
        await stack.feed.send(event("fb-1", ts=T0 + LOBBY_LINGER_MS, phase="live"))
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "lobbies": ["football"], "id": "l"})
            await client.until_seq({"fb-0:1x2": 2, "fb-1:1x2": 1})
            assert client.books.markets["fb-0:1x2"].status == "settled"
