"""WebSocket clients against a real server on 127.0.0.1 (memory broker and store)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import httpx
import msgspec
import pytest
import websockets

import protocol
from protocol import CloseCode
from tests.component.stack import (
    T0,
    Books,
    event,
    flood_until_slow,
    match_result,
    odds,
    over_under,
    price_walk,
    running_stack,
    settle,
    status,
    ws_client,
)

M1 = "fb-1:1x2"
M2 = "fb-1:ou_2.5"


async def rest_snapshot(url: str, market_id: str) -> protocol.Snapshot:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get(f"/v1/markets/{market_id}")
    assert response.status_code == 200
    snapshot = protocol.decode_server(response.content)
    assert isinstance(snapshot, protocol.Snapshot)
    return snapshot


async def test_event_subscription_gets_snapshots_then_contiguous_deltas() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "events": ["fb-1"], "id": 7})
            ack = await client.recv()
            assert ack == protocol.Ack(command="subscribe", id=7, events=("fb-1",))
            await client.until_seq({M1: 1, M2: 1})
            assert "fb-1" in client.books.events
            await stack.feed.send(
                *price_walk(M1, 20, T0),
                status(M1, T0 + 100, "suspended", "goal"),
                event(ts=T0 + 100, phase="live", score=(1, 0)),
                odds(M2, T0 + 101, over="1.50", under="2.60"),
                status(M1, T0 + 102, "open"),
            )
            final = {M1: stack.feed.book(M1).seq, M2: stack.feed.book(M2).seq}
            assert final == {M1: 23, M2: 2}
            await client.until_seq(final)
            assert client.books.seqs[M1] == list(range(1, 24))
            assert client.books.seqs[M2] == [1, 2]
            for market_id in final:
                assert client.books.markets[market_id] == await rest_snapshot(stack.url, market_id)
            assert client.books.events["fb-1"].score == (1, 0)


async def test_market_subscription_while_deltas_flow_is_race_free() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())

        async def pump() -> None:
            for batch in range(40):
                await stack.feed.send(*price_walk(M1, 5, T0 + batch * 10))
                await asyncio.sleep(0)  # Let subscriptions interleave with the feed.

        async with ws_client(stack) as a, ws_client(stack) as b:
            feeder = asyncio.create_task(pump())
            await a.send({"type": "subscribe", "markets": [M1]})
            await asyncio.sleep(0)
            await b.send({"type": "subscribe", "markets": [M1]})
            await feeder
            final = stack.feed.book(M1).seq
            for client in (a, b):
                await client.until_seq({M1: final})
                seqs = client.books.seqs[M1]
                assert seqs == list(range(seqs[0], final + 1)), "gap or duplicate"
                assert client.books.markets[M1] == stack.feed.book(M1)


async def test_lobby_gets_main_markets_and_new_events() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "lobbies": ["football"]})
            await client.until_seq({M1: 1})
            await stack.feed.send(event("fb-2"), match_result("fb-2"), over_under("fb-2"))
            await stack.feed.send(odds("fb-2:1x2", T0 + 5, home="1.80"))
            await client.until_seq({"fb-2:1x2": 2})
            assert set(client.books.markets) == {M1, "fb-2:1x2"}, "only main markets"
            assert {"fb-1", "fb-2"} <= set(client.books.events)


async def test_new_market_of_watched_event_arrives_as_snapshot() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "events": ["fb-1"]})
            await client.until_seq({M1: 1})
            await stack.feed.send(over_under(), odds(M2, T0 + 1, over="1.70"))
            await client.until_seq({M2: 2})
            assert client.books.markets[M2] == stack.feed.book(M2)


async def test_settlement_and_unsubscribe() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1, M2]})
            await client.until_seq({M1: 1, M2: 1})
            await client.send({"type": "unsubscribe", "markets": [M2], "id": "u"})
            await client.until(lambda m: isinstance(m, protocol.Ack) and m.id == "u")
            await stack.feed.send(
                odds(M2, T0 + 1, over="1.10"),
                status(M1, T0 + 2, "closed"),
                settle(M1, T0 + 3, home="winner"),
            )
            await client.until_seq({M1: 3})
            book = client.books.markets[M1]
            assert book.status == "settled"
            assert {s.selection_id: s.status for s in book.selections} == {
                "home": "winner",
                "draw": "loser",
                "away": "loser",
            }
            assert client.books.at(M2) == 1, "unsubscribed market kept streaming"


@pytest.mark.parametrize(
    ("frame", "code", "command_id"),
    [
        ("not json", "bad_json", None),
        ("[1, 2]", "bad_json", None),
        ('{"type": "dance", "id": 4}', "unknown_type", 4),
        ('{"markets": ["x"]}', "unknown_type", None),
        ('{"type": "subscribe", "markets": "fb-1:1x2", "id": "s"}', "invalid", "s"),
        ('{"type": "resume", "id": 9}', "invalid", 9),
        ('{"type": "subscribe", "markets": ["nope"], "id": 5}', "unknown_market", 5),
        ('{"type": "subscribe", "events": ["nope"], "id": 6}', "unknown_event", 6),
        ('{"type": "subscribe", "lobbies": ["curling"]}', "unknown_lobby", None),
    ],
)
async def test_bad_commands_get_error_frames_and_streaming_continues(
    frame: str, code: str, command_id: object
) -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until_seq({M1: 1})
            await client.send(frame)
            error = await client.until(lambda m: isinstance(m, protocol.Error))
            assert isinstance(error, protocol.Error)
            assert (error.code, error.id) == (code, command_id)
            assert error.message
            await stack.feed.send(odds(M1, T0 + 1, home="2.50"))
            await client.until_seq({M1: 2})


async def test_refused_subscribe_changes_nothing() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1, "nope"], "id": 1})
            error = await client.recv()
            assert isinstance(error, protocol.Error) and error.code == "unknown_market"
            assert "nope" in error.message
            await client.send({"type": "ping", "id": 2})
            assert await client.recv() == protocol.Ack(command="ping", id=2)
            assert client.books.markets == {}


async def test_subscription_limit() -> None:
    async with running_stack(max_subscriptions=1) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1, M2], "id": 1})
            error = await client.recv()
            assert isinstance(error, protocol.Error)
            assert error.code == "too_many_subscriptions"


async def test_oversized_frame_closes_with_1009() -> None:
    async with running_stack(max_frame_bytes=1024) as stack, ws_client(stack) as client:
        await client.send({"type": "subscribe", "markets": ["x" * 2000]})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == protocol.MESSAGE_TOO_BIG


async def test_a_burst_is_coalesced_into_few_writes() -> None:
    """Deltas that reach the gateway in one go leave in one write per client (each still
    its own WebSocket message), not one write each."""
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until_seq({M1: 1})
            stats = stack.gateway.stats
            writes, messages = stats.ws_writes, stats.ws_messages
            await stack.feed.send(*price_walk(M1, 30, T0))
            await client.until_seq({M1: 31})
            assert client.books.seqs[M1] == list(range(1, 32))
            assert stats.ws_messages - messages == 30
            assert stats.ws_writes - writes < 5


@pytest.mark.parametrize("subprotocol", [protocol.SUBPROTOCOL_JSON, protocol.SUBPROTOCOL_MSGPACK])
async def test_batched_connection_gets_arrays_of_the_same_stream(subprotocol: str) -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with websockets.connect(
            stack.ws_url + "?batch=1",
            subprotocols=[subprotocol],  # type: ignore[list-item]
        ) as conn:
            decode = (
                protocol.decode_server_batch_msgpack
                if subprotocol == protocol.SUBPROTOCOL_MSGPACK
                else protocol.decode_server_batch
            )
            books = Books()
            sizes: list[int] = []
            await conn.send('{"type":"subscribe","events":["fb-1"]}')
            async with asyncio.timeout(10):
                while books.at(M1) < 1 or books.at(M2) < 1:
                    for message in decode(await conn.recv()):  # type: ignore[arg-type]
                        books.take(message)
            await stack.feed.send(*price_walk(M1, 40, T0), odds(M2, T0 + 50, over="1.5"))
            async with asyncio.timeout(10):
                while books.at(M1) < 41 or books.at(M2) < 2:
                    raw = await conn.recv()
                    assert raw[:1] in (b"[", "[") or subprotocol == protocol.SUBPROTOCOL_MSGPACK
                    batch = decode(raw)  # type: ignore[arg-type]
                    sizes.append(len(batch))
                    for message in batch:
                        books.take(message)
        assert books.seqs[M1] == list(range(1, 42))
        assert max(sizes) > 1, sizes
        for market_id in (M1, M2):
            assert books.markets[market_id] == await rest_snapshot(stack.url, market_id)


async def test_bad_batch_value_is_refused_with_do_not_retry_code() -> None:
    async with running_stack() as stack:
        async with websockets.connect(stack.ws_url + "?batch=yes") as conn:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await conn.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION


async def test_heartbeat_when_quiet() -> None:
    async with running_stack(heartbeat_s=0.2) as stack, ws_client(stack) as client:
        message = await client.recv(timeout=5)
        assert isinstance(message, protocol.Heartbeat)


async def test_unknown_subprotocol_is_refused_with_do_not_retry_code() -> None:
    async with running_stack() as stack:
        async with websockets.connect(stack.ws_url, subprotocols=["mqtt"]) as conn:  # type: ignore[list-item]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await conn.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CloseCode.UNSUPPORTED_SUBPROTOCOL
        assert not CloseCode(closed.value.rcvd.code).retriable


async def test_msgpack_subprotocol() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with websockets.connect(
            stack.ws_url,
            subprotocols=[protocol.SUBPROTOCOL_MSGPACK],  # type: ignore[list-item]
        ) as conn:
            await conn.send(msgspec.json.encode({"type": "subscribe", "markets": [M1]}).decode())
            ack = protocol.decode_server_msgpack(await conn.recv())  # type: ignore[arg-type]
            assert isinstance(ack, protocol.Ack)
            snap = protocol.decode_server_msgpack(await conn.recv())  # type: ignore[arg-type]
            assert snap == stack.feed.book(M1)


async def test_slow_consumer_is_closed_with_resume_code() -> None:
    async with running_stack(queue_frames=16, close_timeout_s=5.0) as stack:
        await stack.feed.send(event(), match_result())
        loop = asyncio.get_running_loop()
        # A raw client that subscribes and then stops reading, with a tiny receive buffer,
        # so back-pressure reaches the server's writer quickly.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", int(stack.url.rsplit(":", 1)[1])))
        await loop.sock_sendall(sock, ws_handshake())
        data = bytearray()
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in data:
                data += await loop.sock_recv(sock, 65536)
        subscribe = f'{{"type":"subscribe","markets":["{M1}"]}}'
        await loop.sock_sendall(sock, masked_text_frame(subscribe))
        async with asyncio.timeout(10):
            while b'"type":"snapshot"' not in data:
                data += await loop.sock_recv(sock, 65536)
        await flood_until_slow(stack, M1)
        async with asyncio.timeout(20):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                data += chunk
        sock.close()
        frames = parse_server_frames(bytes(data[data.index(b"\r\n\r\n") + 4 :]))
        opcode, payload = frames[-1]
        assert opcode == 0x8, "the connection must end with a close frame"
        code = int.from_bytes(payload[:2], "big")
        assert code == CloseCode.SLOW_CONSUMER
        assert CloseCode(code).retriable
        texts = [protocol.decode_server(p) for op, p in frames if op == 0x1]
        assert isinstance(texts[0], protocol.Ack)


def ws_handshake() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame (RFC 6455, server to client)."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if i + length > len(data):
            break
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


async def test_resume_replays_exactly_the_missed_deltas() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 5, T0))
        snap = stack.feed.book(M1)
        await stack.feed.send(*price_walk(M1, 7, T0 + 100))
        async with ws_client(stack) as client:
            await client.send(
                {
                    "type": "resume",
                    "id": "r",
                    "positions": [{"market_id": M1, "epoch": snap.epoch, "seq": snap.seq}],
                }
            )
            client.books.markets[M1] = snap
            client.books.seqs[M1] = [snap.seq]
            ack = await client.recv()
            assert isinstance(ack, protocol.Ack) and ack.markets == (M1,)
            await client.until_seq({M1: snap.seq + 7})
            assert client.books.seqs[M1] == list(range(snap.seq, snap.seq + 8))
            assert client.books.markets[M1] == stack.feed.book(M1)


@pytest.mark.parametrize("case", ["foreign_epoch", "trimmed_history"])
async def test_resume_that_cannot_be_exact_gets_a_reset_snapshot(case: str) -> None:
    async with running_stack(history_size=4) as stack:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 3, T0))
        snap = stack.feed.book(M1)
        await stack.feed.send(*price_walk(M1, 10, T0 + 100))
        epoch = "other" if case == "foreign_epoch" else snap.epoch
        async with ws_client(stack) as client:
            await client.send(
                {
                    "type": "resume",
                    "positions": [{"market_id": M1, "epoch": epoch, "seq": snap.seq}],
                }
            )
            await client.recv()
            reset = await client.recv()
            assert isinstance(reset, protocol.Snapshot)
            assert reset.reset
            assert msgspec.structs.replace(reset, reset=False) == stack.feed.book(M1)


async def test_resume_with_lobby_continues_positioned_markets_without_stale_deltas() -> None:
    """The drain flow: a client comes back with its positions and its lobby."""
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), event("fb-2"), match_result("fb-2"))
        await stack.feed.send(*price_walk(M1, 3, T0))
        async with ws_client(stack) as first:
            await first.send({"type": "subscribe", "lobbies": ["football"]})
            await first.until_seq({M1: 4, "fb-2:1x2": 1})
            kept = dict(first.books.markets)
        await stack.feed.send(*price_walk(M1, 5, T0 + 100))
        async with ws_client(stack) as again:
            again.books.markets.update(kept)
            again.books.seqs.update({m: [s.seq] for m, s in kept.items()})
            positions = [{"market_id": m, "epoch": s.epoch, "seq": s.seq} for m, s in kept.items()]
            await again.send(
                {"type": "resume", "id": "r", "positions": positions, "lobbies": ["football"]}
            )
            ack = await again.recv()
            assert isinstance(ack, protocol.Ack)
            assert (ack.command, ack.id, ack.lobbies) == ("resume", "r", ("football",))
            await again.until_seq({M1: 9})
            assert again.books.seqs[M1] == [4, 5, 6, 7, 8, 9], "exactly the missed deltas"
            assert again.books.markets[M1] == stack.feed.book(M1)
            # Resumed through the lobby: leaving the lobby leaves the market too.
            await again.send({"type": "unsubscribe", "lobbies": ["football"], "id": "u"})
            await again.until(lambda m: isinstance(m, protocol.Ack) and m.id == "u")
            assert not stack.gateway.hub.markets_of(next(iter(stack.gateway.sessions)))


async def test_resume_on_a_live_connection_replays_from_the_client_position() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 2, T0))
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until_seq({M1: 3})
            old = stack.feed.book(M1)
            await stack.feed.send(*price_walk(M1, 4, T0 + 100))
            await client.until_seq({M1: 7})
            # The client pretends it lost seq 4-7 and asks to continue from seq 3.
            client.books.markets[M1] = old
            client.books.seqs[M1] = [3]
            await client.send(
                {"type": "resume", "positions": [{"market_id": M1, "epoch": old.epoch, "seq": 3}]}
            )
            await client.until_seq({M1: 7})
            assert client.books.seqs[M1] == [3, 4, 5, 6, 7]
            await stack.feed.send(*price_walk(M1, 1, T0 + 200))
            await client.until_seq({M1: 8})
            assert client.books.markets[M1] == stack.feed.book(M1)
