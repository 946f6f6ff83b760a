"""RFC 6455 at the edge and cross-site WebSocket hijacking: fragmented commands,
invalid UTF-8, an unsupported version, and the Origin allowlist of WebSocket and SSE."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

import protocol
from tests.component.stack import Stack, event, match_result, running_stack, ws_client
from tests.security import report
from tests.security.wire import exchange, headers_of, status_of, ws_handshake

M1 = "fb-1:1x2"


async def test_a_fragmented_command_is_executed() -> None:
    async with running_stack() as stack, ws_client(stack) as client:
        await stack.feed.send(event(), match_result())
        await client.conn.send(['{"type":"subscribe",', f'"markets":["{M1}"],', '"id":"frag"}'])
        ack = await client.until(lambda m: isinstance(m, protocol.Ack | protocol.Error))
        observed = f"ack {ack.command}" if isinstance(ack, protocol.Ack) else repr(ack)
        report.record("fragmented command (3 frames)", "ack subscribe", observed)
        assert ack == protocol.Ack(command="subscribe", id="frag", markets=(M1,))
        await client.until(lambda m: isinstance(m, protocol.Snapshot))


async def test_a_text_message_that_is_not_utf8_fails_with_1007() -> None:
    async with running_stack() as stack, ws_client(stack) as client:
        await client.conn.send(b'{"type":"ping","id":"\xff"}', text=True)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007


async def test_an_unsupported_version_is_answered_with_the_one_we_speak() -> None:
    async with running_stack() as stack:
        answer = await exchange(stack.node.port, ws_handshake(version="8"))
        assert status_of(answer) == 400
        assert headers_of(answer)["sec-websocket-version"] == "13"


async def sse_status(stack: Stack, origin: str | None) -> tuple[int, httpx.Headers]:
    headers = {} if origin is None else {"Origin": origin}
    async with (
        httpx.AsyncClient(base_url=stack.url) as http,
        http.stream("GET", f"/sse?markets={M1}", headers=headers) as response,
    ):
        return response.status_code, response.headers


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "file://"])
async def test_a_foreign_origin_is_refused_on_websocket_and_sse(origin: str) -> None:
    async with running_stack(allowed_origins="https://app.example") as stack:
        await stack.feed.send(event(), match_result())
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(stack.ws_url, origin=origin)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        assert (await sse_status(stack, origin))[0] == 403
        assert stack.node.admission.stats.refused_origin == 2


@pytest.mark.parametrize(
    ("allowed", "origin"),
    [
        ("https://app.example", "https://app.example"),
        ("", None),  # Not a browser.
        ("", "same"),  # The gateway's own pages.
        ("*", "https://anyone.example"),
        ("null,file://", "null"),
    ],
    ids=["listed", "none", "same-origin", "star", "null-listed"],
)
async def test_an_allowed_origin_is_accepted(allowed: str, origin: str | None) -> None:
    async with running_stack(allowed_origins=allowed) as stack:
        await stack.feed.send(event(), match_result())
        if origin == "same":
            origin = stack.url
        async with ws_client(stack, origin=origin) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until(lambda m: isinstance(m, protocol.Snapshot))
        status, headers = await sse_status(stack, origin)
        assert status == 200
        cross_site = origin is not None and origin != stack.url
        assert headers.get("access-control-allow-origin") == (origin if cross_site else None)


async def test_rest_answers_cross_site_pages_by_the_cors_policy() -> None:
    async with (
        running_stack(allowed_origins="https://app.example") as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
    ):
        allowed = await http.get("/v1/markets", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-Oddstream-Token" in allowed.headers["access-control-expose-headers"]
        foreign = await http.get("/v1/markets", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
        preflight = await http.options(
            "/sse",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert "Last-Event-ID" in preflight.headers["access-control-allow-headers"]
