"""Authentication and per-channel authorisation on the wire: the WebSocket (``auth``,
``refresh``, expiry), SSE (bearer, tickets) and REST snapshots, against a gateway with
``--auth jwt``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

import protocol
from protocol import CloseCode, ErrorCode
from server.session import ConnectionInfo
from tests.component.stack import (
    T0,
    Stack,
    WsClient,
    event,
    match_result,
    over_under,
    price_walk,
    running_stack,
    sse_messages,
    ws_client,
)
from tests.security import report
from tests.security.session_helpers import AUDIENCE, SECRET, hs256

M1 = "fb-1:1x2"
M2 = "fb-1:ou_2.5"
M3 = "fb-2:1x2"


@contextlib.asynccontextmanager
async def jwt_stack(**overrides: Any) -> AsyncIterator[Stack]:
    """A gateway asking for HS256 tokens, with two football events."""
    settings = {"auth": "jwt", "jwt_key": SECRET, **overrides}
    async with running_stack(**settings) as stack:
        await stack.feed.send(event(), match_result(), over_under())
        await stack.feed.send(event("fb-2"), match_result("fb-2"))
        yield stack


async def _error(client: WsClient) -> protocol.Error:
    message = await client.until(lambda m: isinstance(m, protocol.Error))
    assert isinstance(message, protocol.Error)
    return message


async def _close_code(client: WsClient) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_anonymous_clients_follow_only_anonymous_channels() -> None:
    async with jwt_stack(anonymous="lobby:*") as stack, ws_client(stack) as client:
        await client.send({"type": "subscribe", "markets": [M2], "id": 1})
        refused = await client.recv()
        assert isinstance(refused, protocol.Error)
        assert (refused.code, refused.id) == (ErrorCode.UNAUTHORIZED, 1)
        assert f"market:{M2}" in refused.message
        await client.send({"type": "subscribe", "lobbies": ["football"], "id": 2})
        assert await client.recv() == protocol.Ack(command="subscribe", id=2, lobbies=("football",))
        # A main market is granted through its (anonymous) lobby.
        await client.send({"type": "subscribe", "markets": [M3], "id": 3})
        ack = await client.until(
            lambda m: isinstance(m, protocol.Ack | protocol.Error) and m.id == 3
        )
        assert ack == protocol.Ack(command="subscribe", id=3, markets=(M3,))


async def test_a_token_grants_its_channels_and_nothing_else() -> None:
    async with jwt_stack() as stack, ws_client(stack) as client:
        await client.send({"type": "auth", "token": hs256("p-1", ["event:fb-1"]), "id": "a"})
        assert await client.recv() == protocol.Ack(command="auth", id="a")
        # A market of a granted event is granted through it.
        await client.send({"type": "subscribe", "markets": [M1, M2], "id": 1})
        assert await client.recv() == protocol.Ack(command="subscribe", id=1, markets=(M1, M2))
        await client.until_seq({M1: 1, M2: 1})
        for command in (
            {"type": "subscribe", "markets": [M3], "id": 2},
            {"type": "subscribe", "events": ["fb-2"], "id": 3},
            {"type": "resume", "positions": [{"market_id": M3, "epoch": "e", "seq": 1}], "id": 4},
        ):
            await client.send(command)
            refused = await _error(client)
            report.record(
                f"wrong-channel token, {command['type']} {command['id']}",
                f"error {ErrorCode.FORBIDDEN}",
                f"error {refused.code}",
            )
            assert (refused.code, refused.id) == (ErrorCode.FORBIDDEN, command["id"])
        assert client.books.at(M3) == 0


@pytest.mark.parametrize(
    ("case", "token", "code", "says"),
    [
        (
            "forged",
            hs256(key="another-secret-of-forty-characters-long!!"),
            "token_invalid",
            "signature",
        ),
        ("expired", hs256(exp_in=-30), "token_expired", "expired"),
        ("wrong-audience", hs256(aud="someone-else"), "token_invalid", "wrong audience"),
    ],
    ids=["forged", "expired", "wrong-audience"],
)
async def test_refused_auth_is_an_error_then_4102(
    case: str, token: str, code: str, says: str
) -> None:
    async with jwt_stack(jwt_audience=AUDIENCE) as stack, ws_client(stack) as client:
        await client.send({"type": "auth", "token": token, "id": 9})
        refused = await client.recv()
        assert isinstance(refused, protocol.Error)
        close_code = await _close_code(client)
        report.record(
            f"{case} token, WebSocket auth",
            f"error {code}, close {int(CloseCode.UNAUTHORIZED)}",
            f"error {refused.code}, close {close_code}",
        )
        assert (refused.code, refused.id) == (code, 9)
        assert says in refused.message
        assert close_code == CloseCode.UNAUTHORIZED


async def test_expiry_closes_with_4003_and_positions_that_resume_with_a_new_token() -> None:
    async with jwt_stack() as stack:
        async with ws_client(stack) as client:
            await client.send({"type": "auth", "token": hs256("p-1", [f"market:{M1}"], exp_in=2)})
            await client.recv()
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.recv()
            await client.until_seq({M1: 1})
            expired = await _error(client)
            assert expired.code == ErrorCode.TOKEN_EXPIRED
            reconnect = await client.recv()
            assert isinstance(reconnect, protocol.Reconnect)
            assert reconnect.reason == "token_expired"
            assert [p.market_id for p in reconnect.positions] == [M1]
            assert await _close_code(client) == CloseCode.TOKEN_EXPIRED
        await stack.feed.send(*price_walk(M1, 3, T0 + 10))  # Missed while away.
        async with ws_client(stack) as again:
            again.books = client.books
            await again.send({"type": "auth", "token": hs256("p-1", [f"market:{M1}"])})
            assert await again.recv() == protocol.Ack(command="auth")
            positions = [msgspec_position(p) for p in reconnect.positions]
            await again.send({"type": "resume", "positions": positions, "id": "r"})
            assert await again.recv() == protocol.Ack(command="resume", id="r", markets=(M1,))
            await again.until_seq({M1: 4})
            assert again.books.seqs[M1] == [1, 2, 3, 4]  # Nothing lost, no reset.


def msgspec_position(p: protocol.Position) -> dict[str, Any]:
    return {"market_id": p.market_id, "epoch": p.epoch, "seq": p.seq}


async def test_refresh_keeps_the_connection_past_the_first_expiry() -> None:
    async with jwt_stack() as stack, ws_client(stack) as client:
        await client.send({"type": "auth", "token": hs256("p-1", ["event:*"], exp_in=2)})
        await client.recv()
        await client.send({"type": "refresh", "token": hs256("p-2", ["event:*"]), "id": 1})
        refused = await client.recv()
        assert isinstance(refused, protocol.Error)
        assert (refused.code, refused.message) == ("token_invalid", "refresh for another subject")
        await client.send({"type": "refresh", "token": hs256("p-1", ["event:*"]), "id": 2})
        assert await client.recv() == protocol.Ack(command="refresh", id=2)
        await asyncio.sleep(2.5)  # Past the first token's expiry: nothing happens.
        await client.send({"type": "ping", "id": 3})
        assert await client.recv() == protocol.Ack(command="ping", id=3)


async def test_sse_bearer_and_single_use_tickets() -> None:
    async with jwt_stack() as stack, httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
        response = await http.get(f"/sse?markets={M1}")
        assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
        bad = {"authorization": "Bearer not.a.token"}
        response = await http.get(f"/sse?markets={M1}", headers=bad)
        assert (response.status_code, response.json()["code"]) == (401, "token_invalid")
        other = {"authorization": "Bearer " + hs256("p-1", ["event:fb-2"])}
        response = await http.get(f"/sse?markets={M1}", headers=other)
        assert (response.status_code, response.json()["code"]) == (403, "forbidden")
        good = {"authorization": "Bearer " + hs256("p-1", ["event:fb-1"])}
        async for _, kind, _message in sse_messages(http, f"/sse?markets={M1}", good):
            assert kind == "ack"
            break
        assert (await http.post("/v1/tickets")).status_code == 401
        ticket = (await http.post("/v1/tickets", headers=good)).json()
        assert ticket["expires_in"] == 30
        async for _, kind, _message in sse_messages(
            http, f"/sse?markets={M1}&ticket={ticket['ticket']}"
        ):
            assert kind == "ack"
            break
        reused = await http.get(f"/sse?markets={M1}&ticket={ticket['ticket']}")
        assert (reused.status_code, reused.json()["code"]) == (401, "token_invalid")


async def test_sse_first_request_path_honours_the_bearer_token() -> None:
    async with jwt_stack() as stack:
        port = int(stack.url.rsplit(":", 1)[1])
        for headers, status in (
            ("", b"401"),
            (f"authorization: Bearer {hs256('p', ['event:fb-2'])}\r\n", b"403"),
            (f"authorization: Bearer {hs256('p', ['event:fb-1'])}\r\n", b"200"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /sse?markets={M1} HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            writer.close()
            assert head.split(b" ")[1] == status, head


async def test_rest_snapshots_honour_the_same_authorisation() -> None:
    async with (
        jwt_stack(anonymous="lobby:*") as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=5) as http,
    ):
        assert (await http.get(f"/v1/markets/{M2}")).status_code == 401
        assert (await http.get(f"/v1/markets/{M1}")).status_code == 200  # Lobby, anonymous.
        assert (await http.get("/v1/snapshots?lobbies=football")).status_code == 200
        token = {"authorization": "Bearer " + hs256("p", ["event:fb-1"])}
        assert (await http.get(f"/v1/markets/{M2}", headers=token)).status_code == 200
        response = await http.get("/v1/snapshots?events=fb-1,fb-2", headers=token)
        assert (response.status_code, response.json()["code"]) == (403, "forbidden")
        expired = {"authorization": "Bearer " + hs256("p", ["*"], exp_in=-30)}
        response = await http.get(f"/v1/markets/{M1}", headers=expired)
        assert (response.status_code, response.json()["code"]) == (401, "token_expired")


@pytest.mark.parametrize(
    ("anonymous", "channels", "events", "markets"),
    [
        ("", None, [], []),
        ("lobby:*", None, ["fb-1", "fb-2"], [M1, M3]),  # The main markets of every lobby.
        ("", ["event:fb-1"], ["fb-1"], [M1, M2]),
        ("", [f"market:{M3}"], ["fb-2"], [M3]),
        ("", ["event:fb-*"], ["fb-1", "fb-2"], [M1, M2, M3]),
    ],
    ids=["anonymous", "anonymous-lobbies", "event", "market", "pattern"],
)
async def test_rest_lists_show_what_the_caller_may_follow(
    anonymous: str, channels: list[str] | None, events: list[str], markets: list[str]
) -> None:
    headers = {} if channels is None else {"authorization": "Bearer " + hs256("p", channels)}
    async with (
        jwt_stack(anonymous=anonymous) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=5, headers=headers) as http,
    ):
        listed = (await http.get("/v1/events")).json()
        assert [e["event_id"] for e in listed] == events
        listed = (await http.get("/v1/markets")).json()
        assert sorted(m["market_id"] for m in listed) == sorted(markets)
        listed = (await http.get("/v1/markets?event_id=fb-1")).json()
        assert sorted(m["market_id"] for m in listed) == sorted(set(markets) - {M3})
        for event_id in ("fb-1", "fb-2"):
            answer = await http.get(f"/v1/events/{event_id}")
            expected = 200 if event_id in events else 401 if channels is None else 403
            assert answer.status_code == expected, (event_id, answer.text)


async def test_rest_lists_refuse_a_bad_token() -> None:
    async with jwt_stack() as stack, httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
        expired = {"authorization": "Bearer " + hs256("p", ["*"], exp_in=-30)}
        for path in ("/v1/events", "/v1/markets", "/v1/events/fb-1"):
            answer = await http.get(path, headers=expired)
            assert (answer.status_code, answer.json()["code"]) == (401, "token_expired")


async def test_auth_none_acknowledges_auth_and_allows_everything() -> None:
    async with running_stack() as stack, ws_client(stack) as client:
        await stack.feed.send(event(), match_result())
        await client.send({"type": "auth", "token": "anything", "id": 1})
        assert await client.recv() == protocol.Ack(command="auth", id=1)
        await client.send({"type": "subscribe", "markets": [M1], "id": 2})
        assert await client.recv() == protocol.Ack(command="subscribe", id=2, markets=(M1,))


async def test_credentials_from_the_connection_info_are_used_before_any_auth() -> None:
    """A transport that takes the token from the handshake (``Authorization`` header, or a
    subprotocol entry ``oddstream.token.<jwt>``) passes it in ``ConnectionInfo``."""
    token = hs256("p-1", [f"market:{M2}"])
    async with jwt_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.get("/readyz")).status_code == 200  # The relay has started.
        gateway = stack.gateway
        for info in (
            ConnectionInfo(subprotocols=("oddstream.v1.json", f"oddstream.token.{token}")),
            ConnectionInfo(authorization=f"Bearer {token}"),
        ):
            session = gateway.open_session(info=info)
            try:
                await session.execute(protocol.Subscribe(markets=(M2,)))
                assert session.markets == {M2}
                with pytest.raises(protocol.ProtocolError) as refused:
                    await session.execute(protocol.Subscribe(markets=(M1,)))
                assert refused.value.code == ErrorCode.FORBIDDEN
            finally:
                await gateway.close_session(session)
        forged = ConnectionInfo(subprotocols=("oddstream.token.not-a-jwt",))
        session = gateway.open_session(info=forged)
        with pytest.raises(protocol.ProtocolError) as refused:
            await session.execute(protocol.Subscribe(markets=(M2,)))
        assert refused.value.code == ErrorCode.TOKEN_INVALID
        await gateway.close_session(session)


async def test_sse_stream_ends_at_the_token_expiry_with_its_positions() -> None:
    async with jwt_stack() as stack, httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        bearer = {"authorization": "Bearer " + hs256("p-1", ["event:fb-1"], exp_in=2)}
        kinds = []
        async for _, kind, message in sse_messages(http, f"/sse?markets={M1}", bearer):
            kinds.append(kind)
            if isinstance(message, protocol.Error):
                assert message.code == ErrorCode.TOKEN_EXPIRED
            if isinstance(message, protocol.Reconnect):
                assert message.reason == "token_expired"
                assert [p.market_id for p in message.positions] == [M1]
        assert kinds == ["ack", "snapshot", "error", "reconnect"]  # Then the stream ended.


async def test_refusals_are_counted_in_the_operator_metrics() -> None:
    """Auth refusals by code (WebSocket and REST alike), rate-limited commands and the
    closes for rate-limit abuse and for an expired token, on the operator listener."""
    quotas = {"command_rate": 0.5, "command_burst": 2, "rate_limit_close_after": 3}
    async with jwt_stack(ops=True, **quotas) as stack:
        async with ws_client(stack) as forged:
            await forged.send({"type": "auth", "token": hs256(key="x" * 40)})
            assert await _close_code(forged) == CloseCode.UNAUTHORIZED
        async with ws_client(stack) as anonymous:
            await anonymous.send({"type": "subscribe", "markets": [M1]})
            assert (await _error(anonymous)).code == ErrorCode.UNAUTHORIZED
        async with ws_client(stack) as narrow:
            await narrow.send({"type": "auth", "token": hs256("p-1", ["event:fb-1"])})
            await narrow.send({"type": "subscribe", "markets": [M3]})
            assert (await _error(narrow)).code == ErrorCode.FORBIDDEN
        async with ws_client(stack) as abuser:
            for _ in range(5):  # Two within the burst, then three refused: closed.
                await abuser.send({"type": "ping"})
            assert await _close_code(abuser) == CloseCode.RATE_LIMITED
        async with ws_client(stack) as expiring:
            await expiring.send({"type": "auth", "token": hs256("p-1", ["*"], exp_in=2)})
            assert await _close_code(expiring) == CloseCode.TOKEN_EXPIRED
        async with httpx.AsyncClient(base_url=stack.url) as http:
            expired = {"authorization": "Bearer " + hs256("p", ["*"], exp_in=-30)}
            assert (await http.get(f"/v1/markets/{M1}", headers=expired)).status_code == 401
        async with httpx.AsyncClient(base_url=stack.ops_url) as ops:
            metrics = (await ops.get("/metrics")).text.splitlines()
    for line in (
        'oddstream_auth_refusals_total{code="unauthorized"} 1.0',
        'oddstream_auth_refusals_total{code="forbidden"} 1.0',
        'oddstream_auth_refusals_total{code="token_invalid"} 1.0',
        'oddstream_auth_refusals_total{code="token_expired"} 1.0',
        'oddstream_auth_refusals_total{code="unavailable"} 0.0',
        "oddstream_rate_limited_commands_total 3.0",
        "oddstream_rate_limit_closes_total 1.0",
        "oddstream_token_expired_closes_total 1.0",
    ):
        assert line in metrics
