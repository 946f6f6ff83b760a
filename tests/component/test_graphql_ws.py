"""GraphQL subscriptions over ``graphql-transport-ws`` on a real gateway (memory broker
and store): the same stream as the WebSocket protocol, refusals as documented, never a
dropped connection or a traceback (``docs/graphql.md``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import protocol
from tests.component.stack import (
    T0,
    Stack,
    event,
    flood_until_slow,
    match_result,
    over_under,
    price_walk,
    running_stack,
    status,
    ws_client,
)
from tests.security.session_helpers import SECRET, hs256

M1 = "fb-1:1x2"
M2 = "fb-1:ou_2.5"
SELECT = "seq epoch crc type message"


def market(market_id: str, fields: str = SELECT) -> dict[str, Any]:
    return {"query": f'subscription {{ market(id: "{market_id}") {{ {fields} }} }}'}


class GqlClient:
    def __init__(self, conn: ClientConnection):
        self.conn = conn

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.conn.send(
            message if isinstance(message, str) else msgspec.json.encode(message).decode()
        )

    async def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = msgspec.json.decode(await asyncio.wait_for(self.conn.recv(), 10))
        return message

    async def init(self, payload: dict[str, Any] | None = None) -> None:
        await self.send({"type": "connection_init", **({"payload": payload} if payload else {})})
        assert await self.recv() == {"type": "connection_ack"}

    async def closed_with(self) -> tuple[int, str]:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await self.conn.recv()
        assert closed.value.rcvd is not None, "closed without a close frame"
        return closed.value.rcvd.code, closed.value.rcvd.reason


@contextlib.asynccontextmanager
async def gql_client(stack: Stack, **kwargs: Any) -> AsyncIterator[GqlClient]:
    url = stack.ws_url.removesuffix("/ws") + "/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], **kwargs) as conn:  # type: ignore[list-item]
        yield GqlClient(conn)


async def test_a_subscription_sees_the_websocket_stream() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with gql_client(stack) as gql, ws_client(stack) as ws:
            await gql.init()
            await gql.send({"id": "a", "type": "subscribe", "payload": market(M1)})
            await gql.send(
                {"id": "b", "type": "subscribe", "payload": market(M2, "__typename seq")}
            )
            await ws.send({"type": "subscribe", "markets": [M1], "id": 1})
            await stack.feed.send(
                *price_walk(M1, 30, T0),
                status(M1, T0 + 50, "suspended"),
                status(M1, T0 + 51, "open"),
            )
            final = stack.feed.book(M1).seq
            await ws.until_seq({M1: final})
            book: protocol.Snapshot | None = None
            seqs = []
            while book is None or book.seq < final:
                message = await gql.recv()
                assert message["type"] == "next", message
                if message["id"] == "b":
                    assert message["payload"]["data"]["market"] == {
                        "__typename": "MarketMessage",
                        "seq": 1,
                    }
                    continue
                data = message["payload"]["data"]["market"]
                wire = protocol.decode_server(msgspec.json.encode(data["message"]))
                assert (data["seq"], data["epoch"], data["crc"]) == (wire.seq, wire.epoch, wire.crc)  # type: ignore[union-attr]
                if isinstance(wire, protocol.Snapshot):
                    assert data["type"] == "snapshot"
                    book = wire
                else:
                    assert isinstance(wire, protocol.Delta) and book is not None
                    book = protocol.apply(book, wire)  # Checks seq, epoch and crc.
                seqs.append(book.seq)
            assert seqs == ws.books.seqs[M1]
            assert book == ws.books.markets[M1] == stack.feed.book(M1)
            await gql.send({"id": "a", "type": "complete"})
            others = []
            for _ in range(2):  # A ping runs after the complete before it: a barrier.
                await gql.send({"type": "ping"})
                while (message := await gql.recv()) != {"type": "pong"}:
                    others.append(message)
                await stack.feed.send(*price_walk(M1, 3, T0 + 100))
            # "b"'s snapshot may come late; nothing more of "a" once completed.
            assert all(m["id"] == "b" for m in others), others


async def test_refused_subscriptions_get_errors_and_the_connection_stays() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with gql_client(stack) as gql:
            await gql.init()
            refusals = {
                "parse": ({"query": "subscription { market(id: "}, "graphql_parse_failed"),
                "valid": ({"query": "subscription { nope }"}, "graphql_validation_failed"),
                "query": ({"query": "{ events { name } }"}, "bad_request"),
                "fragment": (
                    {"query": 'subscription { market(id: "x") { ... on MarketMessage { seq } } }'},
                    "bad_request",
                ),
                "unknown": (market("nope"), "unknown_market"),
                "big": ({"query": "subscription {" + " " * 9000 + "}"}, "too_large"),
                "vars": (
                    {"query": "subscription($m: ID!) { market(id: $m) { seq } }", "variables": {}},
                    "bad_request",
                ),
                "payload": ({"query": 3}, "bad_request"),
            }
            for sub_id, (payload, expected) in refusals.items():
                await gql.send({"id": sub_id, "type": "subscribe", "payload": payload})
                answer = await gql.recv()
                assert answer["id"] == sub_id and answer["type"] == "error", answer
                assert answer["payload"][0]["extensions"]["code"] == expected, answer
            await gql.send({"id": "ok", "type": "subscribe", "payload": market(M1, "seq")})
            await gql.send({"id": "twice", "type": "subscribe", "payload": market(M1, "seq")})
            answers = {m["id"]: m for m in [await gql.recv(), await gql.recv()]}
            assert answers["ok"]["payload"] == {"data": {"market": {"seq": 1}}}
            assert answers["twice"]["payload"][0]["extensions"]["code"] == "invalid"


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        (["not json"], 4400),
        (['{"type":"connection_init","payload":{"v":' + "[" * 20_000 + "]" * 20_000 + "}}"], 4400),
        (["{}"], 4400),
        ([{"type": "connection_init"}, {"type": "what"}], 4400),
        ([{"type": "connection_init"}, {"type": "subscribe", "payload": market(M1)}], 4400),
        ([{"type": "connection_init"}, {"type": "subscribe", "id": "x"}], 4400),
        ([{"id": "1", "type": "subscribe", "payload": market(M1)}], 4401),
        ([{"type": "connection_init"}, {"type": "connection_init"}], 4429),
        (
            [
                {"type": "connection_init"},
                {"id": "1", "type": "subscribe", "payload": market(M1)},
                {"id": "1", "type": "subscribe", "payload": market(M2)},
            ],
            4409,
        ),
        ([{"type": "connection_init", "payload": {"authorization": 7}}], 4400),
    ],
)
async def test_invalid_messages_close_with_the_protocol_codes(
    messages: list[Any], code: int
) -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with gql_client(stack) as gql:
            for message in messages:
                await gql.send(message)
            assert (await gql.closed_with())[0] == code
        assert stack.gateway.stats.connections == 0


async def test_connection_init_timeout_and_subprotocol() -> None:
    async with running_stack(graphql_init_timeout_s=0.2) as stack:
        async with gql_client(stack) as gql:
            assert await gql.closed_with() == (4408, "Connection initialisation timeout")
        url = stack.ws_url.removesuffix("/ws") + "/graphql"
        async with websockets.connect(url) as conn:
            assert (await GqlClient(conn).closed_with())[0] == 4406


async def test_subscriptions_are_authorised_like_the_websocket() -> None:
    async with running_stack(auth="jwt", jwt_key=SECRET) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with gql_client(stack) as gql:
            await gql.init()
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1)})
            assert (await gql.recv())["payload"][0]["extensions"]["code"] == "unauthorized"
        async with gql_client(stack) as gql:
            await gql.init({"authorization": f"Bearer {hs256(channels=[f'market:{M2}'])}"})
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1)})
            assert (await gql.recv())["payload"][0]["extensions"]["code"] == "forbidden"
            await gql.send({"id": "2", "type": "subscribe", "payload": market(M2, "seq")})
            assert (await gql.recv())["payload"]["data"]["market"] == {"seq": 1}
        header = {"Authorization": f"Bearer {hs256(channels=[f'market:{M1}'])}"}
        async with gql_client(stack, additional_headers=header) as gql:
            await gql.init()
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1, "seq")})
            assert (await gql.recv())["payload"]["data"]["market"] == {"seq": 1}
        async with gql_client(stack) as gql:
            await gql.init({"authorization": "Bearer nonsense"})
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1)})
            assert (await gql.recv())["payload"][0]["extensions"]["code"] == "token_invalid"


async def test_a_slow_subscriber_is_closed_like_a_websocket_one() -> None:
    async with running_stack(queue_frames=16, close_timeout_s=5.0) as stack:
        await stack.feed.send(event(), match_result())
        async with gql_client(stack, max_queue=1) as gql:  # Stops reading when 1 is queued.
            await gql.init()
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1)})
            assert (await gql.recv())["type"] == "next"
            await flood_until_slow(stack, M1)
            code, _ = await gql.closed_with()
            assert code == protocol.CloseCode.SLOW_CONSUMER


async def test_the_edge_checks_a_graphql_upgrade_like_a_websocket_one() -> None:
    async with running_stack(allowed_origins="https://app.example", max_connections=2) as stack:
        url = stack.ws_url.removesuffix("/ws") + "/graphql"
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url, origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        assert stack.node.admission.stats.refused_origin == 1
        async with gql_client(stack), gql_client(stack):  # The node's cap: 2.
            with pytest.raises(InvalidStatus) as full:
                await websockets.connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
            assert full.value.response.status_code == 503


async def test_subscriptions_per_connection_are_bounded() -> None:
    async with running_stack(max_subscriptions=1) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        async with gql_client(stack) as gql:
            await gql.init()
            await gql.send({"id": "1", "type": "subscribe", "payload": market(M1, "seq")})
            assert (await gql.recv())["payload"]["data"]["market"] == {"seq": 1}
            await gql.send({"id": "2", "type": "subscribe", "payload": market(M2, "seq")})
            refused = await gql.recv()
            assert refused["id"] == "2"
            assert refused["payload"][0]["extensions"]["code"] == "too_many_subscriptions"
            await gql.send({"id": "1", "type": "complete"})
            await gql.send({"id": "3", "type": "subscribe", "payload": market(M2, "seq")})
            assert await gql.recv() == {
                "id": "3",
                "type": "next",
                "payload": {"data": {"market": {"seq": 1}}},
            }
