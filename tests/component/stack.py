"""An in-process gateway on 127.0.0.1 over the memory broker and store, fed by a scripted
feed, and small clients that rebuild books from what they receive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar

import httpx
import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

import protocol
from channels.broker import MemoryBroker
from channels.store import MemoryStore, Store
from feeds.embedded import epoch_minter
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    FeedSelection,
    encode_feed,
    topic_of,
)
from feeds.processor import FeedRecord, Processor, Publisher, commit_step
from server.app import build_app
from server.gateway import Gateway
from server.serve import Listening, bind, listening
from server.settings import Settings

S = TypeVar("S", bound=Store)
B = TypeVar("B", bound=Publisher)


class Feed(Generic[S, B]):
    """Drives the real processor by hand: each ``send`` is processed, stored and
    published before it returns, so tests know exactly what the server has (in memory,
    or on a real Redis)."""

    def __init__(self, store: S, broker: B):
        self.store = store
        self.broker = broker
        self.processor = Processor(epoch_minter(lambda: 1_700_000_000_000))
        self.offsets: dict[str, int] = {}
        self.dead = 0

    async def send(self, *messages: FeedMessage, head: bytes = b"") -> None:
        """``head``: an envelope's header line put before every payload published, as a
        book processor does (:mod:`channels.stamps`)."""
        records = []
        for m in messages:
            topic = topic_of(m)
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            records.append(FeedRecord(topic, 0, offset, encode_feed(m), m.event_id.encode()))
        step = self.processor.process(records)
        self.dead += len(step.dead_letters)
        step.publications = [(c, head + payload) for c, payload in step.publications]
        await commit_step(step, self.store, self.broker)

    def book(self, market_id: str) -> protocol.Snapshot:
        return self.processor.books.markets[market_id].snapshot


@dataclass
class Stack:
    url: str
    feed: Feed[MemoryStore, MemoryBroker]
    gateway: Gateway
    store: MemoryStore
    node: Listening

    @property
    def ops_url(self) -> str:
        assert self.node.ops_port is not None, "running_stack(ops=True)"
        return f"http://127.0.0.1:{self.node.ops_port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"


@contextlib.asynccontextmanager
async def running_stack(
    gateway_hook: Any = None,
    *,
    ops: bool = False,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """A gateway served as in production (``server.serve.listening``) over a memory
    store and broker, with ``overrides`` of its settings; with ``ops``, the operator
    listener on a free port too; ``gateway_hook(store, broker)``: background coroutines
    for the app's lifetime."""
    settings = Settings(**{"heartbeat_s": 5.0, **overrides})
    store = MemoryStore(history_size=settings.history_size)
    broker = MemoryBroker()
    gateway = Gateway(settings, broker, store)
    app = build_app(gateway, background=gateway_hook(store, broker) if gateway_hook else ())
    sock = bind("127.0.0.1", 0, flags="test")
    ops_sock = bind("127.0.0.1", 0, flags="test") if ops else None
    async with listening(app, settings, gateway, sock, ops_sock) as node:
        yield Stack(f"http://127.0.0.1:{node.port}", Feed(store, broker), gateway, store, node)


# -- a scripted football event ----------------------------------------------------------------

T0 = 1_700_000_000_000


def d(value: str) -> Decimal:
    return Decimal(value)


def event(
    event_id: str = "fb-1",
    *,
    ts: int = T0,
    phase: str = "pre",
    score: tuple[int, int] = (0, 0),
    sport: str = "football",
) -> FeedEvent:
    return FeedEvent(
        event_id=event_id,
        ts=ts,
        sport=sport,
        competition="Test League",
        home="Home FC",
        away="Away FC",
        start_time=T0 + 3_600_000,
        phase=phase,
        score=score,
    )  # type: ignore[arg-type]


def match_result(event_id: str = "fb-1", *, ts: int = T0, sport: str = "football") -> FeedMarket:
    return FeedMarket(
        event_id=event_id,
        market_id=f"{event_id}:1x2",
        ts=ts,
        sport=sport,
        market_kind="1x2",
        name="Match result",
        main=True,
        selections=(
            FeedSelection("home", "Home FC", d("2.10")),
            FeedSelection("draw", "Draw", d("3.40")),
            FeedSelection("away", "Away FC", d("3.60")),
        ),
    )


def over_under(event_id: str = "fb-1", *, ts: int = T0) -> FeedMarket:
    return FeedMarket(
        event_id=event_id,
        market_id=f"{event_id}:ou_2.5",
        ts=ts,
        sport="football",
        market_kind="ou_2.5",
        name="Over/under 2.5 goals",
        selections=(
            FeedSelection("over", "Over 2.5", d("1.90")),
            FeedSelection("under", "Under 2.5", d("1.95")),
        ),
    )


def odds(market_id: str, ts: int, **prices: str) -> FeedOdds:
    return FeedOdds(
        event_id=market_id.split(":")[0],
        market_id=market_id,
        ts=ts,
        prices=tuple(FeedPrice(k, d(v)) for k, v in prices.items()),
    )


def status(market_id: str, ts: int, value: str, reason: str | None = None) -> FeedMarketStatus:
    return FeedMarketStatus(
        event_id=market_id.split(":")[0], market_id=market_id, ts=ts, status=value, reason=reason
    )  # type: ignore[arg-type]


def settle(market_id: str, ts: int, **results: str) -> FeedResult:
    return FeedResult(
        event_id=market_id.split(":")[0], market_id=market_id, ts=ts, results=tuple(results.items())
    )  # type: ignore[arg-type]


def price_walk(market_id: str, n: int, start_ts: int) -> list[FeedOdds]:
    """``n`` price moves, each a real change."""
    return [
        odds(market_id, start_ts + i, home=f"{2 + (i % 50) / 100:.2f}") for i in range(1, n + 1)
    ]


async def flood_until_slow(stack: Stack, market_id: str) -> None:
    """Feed ``market_id`` until the gateway closes a slow consumer (once). Price moves of
    one market conflate into one queued update; state changes are never merged away, so
    suspensions and reopenings fill the queue of a client that stopped reading."""
    for batch in range(5000):
        ts = T0 + batch * 20
        await stack.feed.send(
            *price_walk(market_id, 8, ts),
            status(market_id, ts + 10, "suspended", "goal"),
            status(market_id, ts + 11, "open"),
        )
        await asyncio.sleep(0)  # Let the gateway write (and find the client stuck).
        if stack.gateway.stats.slow_consumer_closes:
            break
    assert stack.gateway.stats.slow_consumer_closes == 1


# -- clients -----------------------------------------------------------------------------------


@dataclass
class Books:
    """A client's rebuilt books: every market message goes through ``protocol.apply``."""

    markets: dict[str, protocol.Snapshot] = field(default_factory=dict)
    events: dict[str, protocol.EventState] = field(default_factory=dict)
    seqs: dict[str, list[int]] = field(default_factory=dict)
    others: list[protocol.ServerMessage] = field(default_factory=list)

    def take(self, message: protocol.ServerMessage) -> None:
        match message:
            case protocol.Snapshot():
                self.markets[message.market_id] = message
                self.seqs.setdefault(message.market_id, []).append(message.seq)
            case protocol.Delta():
                base = self.markets.get(message.market_id)
                assert base is not None, f"delta before snapshot for {message.market_id}"
                self.markets[message.market_id] = protocol.apply(base, message)
                self.seqs[message.market_id].append(message.seq)
            case protocol.EventState():
                self.events[message.event_id] = message
            case _:
                self.others.append(message)

    def at(self, market_id: str) -> int:
        snap = self.markets.get(market_id)
        return 0 if snap is None else snap.seq


class WsClient:
    def __init__(self, conn: ClientConnection):
        self.conn = conn
        self.books = Books()

    async def send(self, command: dict[str, Any] | str | bytes) -> None:
        if isinstance(command, dict):
            await self.conn.send(msgspec.json.encode(command).decode())
        else:
            await self.conn.send(command)

    async def recv(self, timeout: float = 5.0) -> protocol.ServerMessage:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        message = protocol.decode_server(raw)
        self.books.take(message)
        return message

    async def until(self, predicate: Any, timeout: float = 10.0) -> protocol.ServerMessage:
        """Receive until ``predicate(message)`` is true; returns that message."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if predicate(message):
                    return message

    async def until_seq(self, targets: dict[str, int], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while any(self.books.at(m) < s for m, s in targets.items()):
                await self.recv(timeout)


@contextlib.asynccontextmanager
async def ws_client(stack: Stack, **kwargs: Any) -> AsyncIterator[WsClient]:
    async with websockets.connect(stack.ws_url, **kwargs) as conn:
        yield WsClient(conn)


async def sse_messages(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[str | None, str, protocol.ServerMessage]]:
    """(id, event, message) of each SSE event of a streaming response."""
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200, await response.aread()
        event_id: str | None = None
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield event_id, kind, protocol.decode_server(line[6:])
                event_id = None


def summaries_by_id(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["market_id"]: r for r in rows}
