"""Delivery under pressure, against a real server on 127.0.0.1 (memory broker and store):
conflation of clients that fall behind, client-requested conflation intervals, dead
clients, multi-market SSE resume tokens, REST tokens, drain, and feed staleness."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import websockets

import protocol
from channels.broker import MemoryBroker
from channels.names import route
from channels.store import MemoryStore
from feeds.embedded import EmbeddedPipeline
from feeds.model import FeedMarket, FeedMessage, FeedSelection
from feeds.staleness import REASON
from protocol import Ack, CloseCode, Delta, Position, Reconnect, Snapshot
from server import rest
from server.resume_token import decode_token
from tests.component.stack import (
    T0,
    Books,
    Stack,
    event,
    match_result,
    odds,
    over_under,
    price_walk,
    running_stack,
    sse_messages,
    status,
    ws_client,
)
from tests.component.test_websocket import masked_text_frame, ws_handshake

M1 = "fb-1:1x2"
M2 = "fb-1:ou_2.5"
M3 = "fb-1:btts"


def btts(event_id: str = "fb-1") -> FeedMarket:
    return FeedMarket(
        event_id=event_id,
        market_id=f"{event_id}:btts",
        ts=T0,
        sport="football",
        market_kind="btts",
        name="Both teams to score",
        selections=(
            FeedSelection("yes", "Yes", Decimal("1.80")),
            FeedSelection("no", "No", Decimal("2.00")),
        ),
    )


def exact(snap: Snapshot) -> Snapshot:
    """The book a client holds, without the delivery flags (``reset``, and ``conflated``
    once the protocol has it)."""
    flags = {f: False for f in ("reset", "conflated") if f in Snapshot.__struct_fields__}
    return msgspec.structs.replace(snap, **flags)


def position(snap: Snapshot) -> Position:
    return Position(market_id=snap.market_id, epoch=snap.epoch, seq=snap.seq)


# -- conflation ----------------------------------------------------------------------------


async def test_a_client_behind_gets_conflated_exact_books_and_every_state_change() -> None:
    async with running_stack(conflate_after_frames=4) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "events": ["fb-1"]})
            await client.until_seq({M1: 1, M2: 1})
            # One burst: everything is offered before the writer runs, so the client is
            # "behind" as soon as 4 frames are queued.
            burst: list[FeedMessage] = [
                *price_walk(M1, 30, T0),
                *price_walk(M2, 20, T0),
                status(M1, T0 + 100, "suspended", "goal"),
                odds(M1, T0 + 101, home="1.50"),
                status(M1, T0 + 102, "open"),
                *price_walk(M1, 10, T0 + 200),
            ]
            await stack.feed.send(*burst)
            final = {M1: stack.feed.book(M1).seq, M2: stack.feed.book(M2).seq}
            statuses: list[str] = []
            received = 0
            async with asyncio.timeout(10):
                while any(client.books.at(m) < s for m, s in final.items()):
                    message = await client.recv()
                    if isinstance(message, Snapshot | Delta):
                        received += 1
                        if message.market_id == M1:
                            statuses.append(client.books.markets[M1].status)
            for m in final:
                assert exact(client.books.markets[m]) == stack.feed.book(m)
            assert received < len(burst) // 4, "the backlog was conflated"
            assert stack.gateway.conflation.merged > 0
            # The suspension is never merged away: it is seen before the reopening.
            assert "suspended" in statuses
            assert statuses.index("suspended") < len(statuses) - 1
            assert statuses[-1] == "open"


async def test_conflate_ms_spaces_a_markets_updates() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with websockets.connect(stack.ws_url + "?conflate_ms=150") as conn:
            await conn.send('{"type":"subscribe","markets":["fb-1:1x2"]}')
            books = Books()
            arrivals: list[float] = []

            async def feed() -> None:
                for i in range(40):
                    await stack.feed.send(odds(M1, T0 + i, home=f"{2 + i / 100:.2f}"))
                    await asyncio.sleep(0.01)  # Pacing the feed, by design.

            feeder = asyncio.create_task(feed())
            async with asyncio.timeout(10):
                while books.at(M1) < 41:
                    message = protocol.decode_server(await conn.recv())
                    books.take(message)
                    if isinstance(message, Snapshot | Delta):
                        arrivals.append(time.monotonic())
            await feeder
        assert exact(books.markets[M1]) == stack.feed.book(M1)
        updates = arrivals[1:]  # After the subscription's snapshot.
        assert 2 <= len(updates) <= 6, "40 moves in ~0.4 s, one update per 150 ms"
        gaps = [b - a for a, b in itertools.pairwise(updates)]
        assert min(gaps) > 0.1


async def test_an_invalid_conflate_ms_is_refused() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result())
        async with websockets.connect(stack.ws_url + "?conflate_ms=999999") as conn:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await conn.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION
        response = await http.get(f"/sse?markets={M1}&conflate_ms=-1")
        assert (response.status_code, response.json()["code"]) == (400, "invalid")


async def test_drain_flushes_what_an_interval_holds_back() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with websockets.connect(stack.ws_url + "?conflate_ms=60000") as conn:
            books = Books()
            await conn.send('{"type":"subscribe","markets":["fb-1:1x2"]}')
            async with asyncio.timeout(10):
                while books.at(M1) < 1:
                    books.take(protocol.decode_server(await conn.recv()))
            # The snapshot went in a flush: what follows is held for a minute.
            await stack.feed.send(*price_walk(M1, 5, T0 + 10))
            drain = asyncio.create_task(stack.gateway.drain(5.0, batches=1))
            reconnect = None
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        message = protocol.decode_server(await conn.recv())
                        books.take(message)
                        if isinstance(message, Reconnect):
                            reconnect = message
            await drain
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.GOING_AWAY
        assert reconnect is not None
        assert exact(books.markets[M1]) == stack.feed.book(M1)
        assert reconnect.positions == (position(stack.feed.book(M1)),)


# -- dead clients ---------------------------------------------------------------------------


class StuckClient:
    """A raw TCP client with a tiny receive buffer that stops reading after subscribing."""

    def __init__(self, stack: Stack):
        self.port = int(stack.url.rsplit(":", 1)[1])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)
        self.data = bytearray()

    async def connect(self, request: bytes, until: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        await loop.sock_sendall(self.sock, request)
        await self.read_until(until)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def read_until(self, marker: bytes) -> None:
        async with asyncio.timeout(10):
            while marker not in self.data:
                self.data += await asyncio.get_running_loop().sock_recv(self.sock, 65536)

    async def read_ws_close(self) -> tuple[int, bytes]:
        """Read until the server's WebSocket close frame; returns (code, reason)."""
        loop = asyncio.get_running_loop()
        pos = self.data.index(b"\r\n\r\n") + 4
        async with asyncio.timeout(20):
            while True:
                # Walk complete frames from where the last look stopped (no re-parsing).
                while pos + 2 <= len(self.data):
                    opcode, length = self.data[pos] & 0x0F, self.data[pos + 1] & 0x7F
                    head = 2 + {126: 2, 127: 8}.get(length, 0)
                    if pos + head > len(self.data):
                        break
                    if length >= 126:
                        length = int.from_bytes(self.data[pos + 2 : pos + head], "big")
                    if pos + head + length > len(self.data):
                        break
                    payload = bytes(self.data[pos + head : pos + head + length])
                    pos += head + length
                    if opcode == 0x8:
                        return int.from_bytes(payload[:2], "big"), payload[2:]
                chunk = await loop.sock_recv(self.sock, 1 << 20)
                assert chunk, "connection ended without a close frame"
                self.data += chunk

    def close(self) -> None:
        self.sock.close()


async def flood_until(stack: Stack, done: Any) -> None:
    """Feed many markets (so conflation cannot shrink the volume) until ``done()``."""
    for batch in range(10_000):
        if done():
            return
        await stack.feed.send(*price_walk(M1, 20, T0 + batch * 100))
        await stack.feed.send(*price_walk(M2, 20, T0 + batch * 100))
        await asyncio.sleep(0.001)  # Lets the gateway's writer run (and block), by design.
    pytest.fail("the gateway never noticed the client stopped reading")


async def test_a_websocket_client_that_stops_reading_is_dropped_with_4002() -> None:
    async with running_stack(send_timeout_s=0.3, close_timeout_s=5.0) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        client = StuckClient(stack)
        try:
            await client.connect(ws_handshake(), b"\r\n\r\n")
            await client.send(masked_text_frame('{"type":"subscribe","events":["fb-1"]}'))
            await client.read_until(b'"type":"snapshot"')
            await flood_until(stack, lambda: stack.gateway.stats.dead_client_closes)
            code, reason = await client.read_ws_close()
        finally:
            client.close()
        assert stack.gateway.stats.slow_consumer_closes == 0, "conflation kept it small"
        assert (code, reason) == (CloseCode.NOT_READING, b"not reading; resume")
        assert CloseCode(code).retriable


async def test_an_sse_client_that_stops_reading_is_dropped() -> None:
    async with running_stack(send_timeout_s=0.3) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        client = StuckClient(stack)
        try:
            request = b"GET /sse?events=fb-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            await client.connect(request, b"event: snapshot")
            await flood_until(stack, lambda: stack.gateway.stats.dead_client_closes)
        finally:
            client.close()
        assert not stack.gateway.sessions


async def test_a_websocket_client_that_never_sends_is_kept() -> None:
    async with running_stack(heartbeat_s=0.05) as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until_seq({M1: 1})
            for _ in range(5):  # Silent for five heartbeat intervals.
                await client.until(lambda m: isinstance(m, protocol.Heartbeat))
            await stack.feed.send(odds(M1, T0 + 1, home="2.30"))
            await client.until_seq({M1: 2})
        assert stack.gateway.stats.dead_client_closes == 0


async def test_sse_heartbeat_when_quiet() -> None:
    async with (
        running_stack(heartbeat_s=0.05) as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
    ):
        await stack.feed.send(event(), match_result())
        stream = sse_messages(http, f"/sse?markets={M1}")
        async with asyncio.timeout(10):
            async for event_id, kind, _ in stream:
                if kind == "heartbeat":
                    assert event_id is None
                    break
            await stream.aclose()


# -- SSE resume tokens ---------------------------------------------------------------------


async def read_until(
    stream: AsyncIterator[tuple[str | None, str, protocol.ServerMessage]],
    books: Books,
    targets: dict[str, int],
    log: list[protocol.ServerMessage],
) -> str | None:
    """Apply stream messages until every target seq is reached; the last id seen."""
    last = None
    async with asyncio.timeout(10):
        async for event_id, _, message in stream:
            books.take(message)
            log.append(message)
            last = event_id or last
            if all(books.at(m) >= s for m, s in targets.items()):
                return last
    return last


async def test_last_event_id_resumes_every_market_of_an_event_stream_exactly() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under(), *price_walk(M1, 3, T0))
        books = Books()
        log: list[protocol.ServerMessage] = []
        stream = sse_messages(http, "/sse?events=fb-1")
        token = await read_until(stream, books, {M1: 4, M2: 1}, log)
        await stream.aclose()
        assert token is not None
        held = {m: position(books.markets[m]) for m in (M1, M2)}
        assert decode_token(token) == [held[M1], held[M2]]
        # While away: both markets move, and a new market appears.
        await stack.feed.send(
            *price_walk(M1, 5, T0 + 100),
            odds(M2, T0 + 101, over="1.60"),
            status(M2, T0 + 102, "suspended", "var"),
            btts(),
        )
        final = {m: stack.feed.book(m).seq for m in (M1, M2, M3)}
        log.clear()
        stream = sse_messages(http, "/sse?events=fb-1", headers={"Last-Event-ID": token})
        token = await read_until(stream, books, final, log)
        await stream.aclose()
        ack = log[0]
        assert isinstance(ack, Ack)
        assert (ack.command, set(ack.markets)) == ("resume", {M1, M2})
        snapshots = [m.market_id for m in log if isinstance(m, Snapshot)]
        assert snapshots == [M3], "resumed markets continue without a snapshot"
        assert books.seqs[M1] == list(range(4, 10))
        assert books.seqs[M2] == [1, 2, 3]
        for m in final:
            assert exact(books.markets[m]) == stack.feed.book(m)
        assert token is not None
        assert decode_token(token) == [position(stack.feed.book(m)) for m in sorted(final)]


async def test_a_token_resumes_what_it_can_and_resets_the_rest() -> None:
    async with (
        running_stack(history_size=4) as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
    ):
        await stack.feed.send(event(), match_result(), over_under())
        books = Books()
        log: list[protocol.ServerMessage] = []
        stream = sse_messages(http, f"/sse?markets={M1},{M2}")
        token = await read_until(stream, books, {M1: 1, M2: 1}, log)
        await stream.aclose()
        assert token is not None
        # M1 moves past the history window; M2 stays within it.
        await stack.feed.send(*price_walk(M1, 10, T0), odds(M2, T0 + 1, over="1.70"))
        log.clear()
        stream = sse_messages(http, f"/sse?markets={M1},{M2}&last_event_id={token}")
        await read_until(stream, books, {M1: 11, M2: 2}, log)
        await stream.aclose()
        reset = [m for m in log if isinstance(m, Snapshot)]
        assert [(s.market_id, s.reset) for s in reset] == [(M1, True)]
        assert books.seqs[M2] == [1, 2]
        for m in (M1, M2):
            assert exact(books.markets[m]) == stack.feed.book(m)


async def test_a_token_for_markets_the_query_no_longer_covers_starts_them_afresh() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under())
        books = Books()
        stream = sse_messages(http, f"/sse?markets={M1}")
        token = await read_until(stream, books, {M1: 1}, [])
        await stream.aclose()
        log: list[protocol.ServerMessage] = []
        stream = sse_messages(http, f"/sse?markets={M2}&last_event_id={token}")
        await read_until(stream, Books(), {M2: 1}, log)
        await stream.aclose()
        ack = log[0]
        assert isinstance(ack, Ack) and (ack.command, ack.markets) == ("subscribe", (M2,))
        assert not [m for m in log if isinstance(m, Delta | Snapshot) and m.market_id == M1]


async def test_an_unreadable_token_starts_the_stream_afresh() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result())
        log: list[protocol.ServerMessage] = []
        stream = sse_messages(http, f"/sse?markets={M1}", headers={"Last-Event-ID": "AAAA!"})
        await read_until(stream, Books(), {M1: 1}, log)
        await stream.aclose()
        assert isinstance(log[0], Ack) and log[0].command == "subscribe"


# -- REST tokens ---------------------------------------------------------------------------


async def test_load_over_rest_then_stream_from_exactly_there() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under(), *price_walk(M1, 3, T0))
        response = await http.get("/v1/snapshots", params={"markets": f"{M1},{M2}"})
        assert response.status_code == 200
        snaps = msgspec.json.decode(response.content, type=list[Snapshot])
        assert [s.market_id for s in snaps] == [M1, M2]
        token = response.headers[rest.TOKEN_HEADER]
        assert decode_token(token) == [position(s) for s in snaps]
        books = Books()
        for s in snaps:
            books.take(s)
        await stack.feed.send(*price_walk(M1, 4, T0 + 100), odds(M2, T0 + 101, over="1.55"))
        log: list[protocol.ServerMessage] = []
        stream = sse_messages(http, f"/sse?markets={M1},{M2}&last_event_id={token}")
        await read_until(stream, books, {M1: 8, M2: 2}, log)
        await stream.aclose()
        assert not [m for m in log if isinstance(m, Snapshot)], "nothing sent twice"
        assert books.seqs[M1] == [4, 5, 6, 7, 8]
        for m in (M1, M2):
            assert exact(books.markets[m]) == stack.feed.book(m)


async def test_rest_snapshot_answers_carry_their_token() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under(), event("fb-2"))
        one = await http.get(f"/v1/markets/{M1}")
        assert decode_token(one.headers[rest.TOKEN_HEADER]) == [position(stack.feed.book(M1))]
        by_event = await http.get("/v1/snapshots", params={"events": "fb-1"})
        assert {s["market_id"] for s in by_event.json()} == {M1, M2}
        lobby = await http.get("/v1/snapshots", params={"lobbies": "football"})
        assert [s["market_id"] for s in lobby.json()] == [M1]
        for params, code, status_code in [
            ({}, "invalid", 400),
            ({"markets": f"{M1},nope"}, "unknown_market", 404),
            ({"events": "nope"}, "unknown_event", 404),
            ({"lobbies": "curling"}, "unknown_lobby", 404),
        ]:
            response = await http.get("/v1/snapshots", params=params)
            assert (response.status_code, response.json()["code"]) == (status_code, code)
            assert rest.TOKEN_HEADER not in response.headers


class ResumeWithToken(protocol.Resume, frozen=True, kw_only=True):
    """``resume`` with the proposed ``token`` field (see docs/guarantees.md)."""

    token: str | None = None


async def test_a_resume_carrying_a_rest_token_continues_exactly() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 2, T0))
        token = (await http.get(f"/v1/markets/{M1}")).headers[rest.TOKEN_HEADER]
        await stack.feed.send(*price_walk(M1, 3, T0 + 100))
        session = stack.gateway.open_session()
        try:
            await session.execute(ResumeWithToken(positions=(), token=token, id="r"))
            frames = session.outbox.take_now()
        finally:
            await stack.gateway.close_session(session)
        messages = [f.message for f in frames]
        assert messages[0] == Ack(command="resume", id="r", markets=(M1,))
        assert [(type(m).__name__, m.seq) for m in messages[1:]] == [  # type: ignore[union-attr]
            ("Delta", 4),
            ("Delta", 5),
            ("Delta", 6),
        ]


# -- feed staleness ---------------------------------------------------------------------------


async def test_a_silent_feed_suspends_its_markets_until_it_speaks_again() -> None:
    """The embedded pipeline on the wall clock: a 0.3 s bound, a feed the test controls."""
    incoming: asyncio.Queue[FeedMessage] = asyncio.Queue()
    brokers: list[MemoryBroker] = []

    async def feed() -> AsyncIterator[FeedMessage]:
        while True:
            yield await incoming.get()

    def hook(store: MemoryStore, broker: MemoryBroker) -> list[Any]:
        brokers.append(broker)
        return [EmbeddedPipeline(feed(), store, broker, stale_after_s=0.3).run]

    async with running_stack(gateway_hook=hook) as stack:
        # Published means stored: watch the event's route to know the setup is in.
        published = asyncio.Event()
        watcher = await brokers[0].subscription(lambda c, p: published.set(), lambda: None)
        await watcher.subscribe(route("football", "fb-1"))
        for message in (
            event(),
            match_result(),
            over_under(),
            status(M2, T0 + 1, "suspended", "var"),
        ):
            incoming.put_nowait(message)
        async with asyncio.timeout(10):
            while True:
                published.clear()
                stored = await stack.store.snapshot(M2)
                if stored is not None and stored.seq == 2:
                    break
                await published.wait()
        await watcher.close()
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "events": ["fb-1"]})
            await client.until_seq({M1: 1, M2: 2})
            # Silence: the guard suspends the open market (and only it).
            await client.until_seq({M1: 2})
            stale = client.books.markets[M1]
            assert (stale.status, stale.reason) == ("suspended", REASON)
            assert client.books.markets[M2].reason == "var"
            # The feed speaks: its message first, then the reopening.
            incoming.put_nowait(odds(M1, T0 + 500, home="2.40"))
            await client.until_seq({M1: 4})
            book = client.books.markets[M1]
            assert (book.status, book.reason, book.selections[0].price) == (
                "open",
                None,
                Decimal("2.40"),
            )
            assert client.books.markets[M2].reason == "var", "not the guard's to reopen"
            assert exact(client.books.markets[M1]) == await stack.store.snapshot(M1)
