"""The HTTP side of the edge: malformed, oversized and unsupported requests get their
documented status, no answer reveals the server, operator endpoints are not public,
and every transport passes the same connection caps."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.component.stack import event, match_result, running_stack
from tests.security.wire import exchange, headers_of, status_of


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n" + b"a" * 2048, 413),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ],
    ids=["version", "head", "body", "malformed", "tls"],
)
async def test_bad_requests_get_their_status_and_a_close(request_head: bytes, status: int) -> None:
    async with running_stack(max_body_bytes=1024) as stack:
        answer = await exchange(
            stack.node.port, request_head + (b"" if status != 400 else b"\r\n\r\n")
        )
        assert status_of(answer) == status
        assert headers_of(answer)["connection"] == "close"
        assert stack.node.admission.stats.bad_requests == 1


async def test_no_answer_names_the_server() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result())
        for path in ("/healthz", "/v1/markets", "/v1/markets/nope", "/nope"):
            assert "server" not in (await http.get(path)).headers
        head = await http.head("/v1/markets")
        assert head.status_code == 200
        assert head.content == b""
        assert "server" not in head.headers
        async with http.stream("GET", "/sse?markets=fb-1:1x2") as sse:
            assert "server" not in sse.headers
        async with websockets.connect(stack.ws_url) as conn:
            assert conn.response is not None
            assert "Server" not in conn.response.headers


async def test_metrics_are_on_the_operator_listener_only() -> None:
    async with (
        running_stack(ops=True) as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
        httpx.AsyncClient(base_url=stack.ops_url) as ops,
    ):
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        metrics = (await ops.get("/metrics")).text
        for line in (
            "oddstream_connections ",
            "oddstream_edge_refused_per_ip_total 0",
            "oddstream_limit_header_timeout_seconds 10.0",
            "oddstream_limit_max_connections_per_ip 256",
        ):
            assert line in metrics
        assert (await ops.get("/healthz")).status_code == 200
        assert (await ops.get("/readyz")).status_code == 200
        async with ops.stream("GET", "/sse?markets=x") as sse:
            assert sse.status_code == 404, "no streams on the operator listener"


@pytest.mark.parametrize("transport", ["ws", "sse", "rest"])
async def test_the_address_cap_refuses_the_next_connection_of_every_transport(
    transport: str,
) -> None:
    async with running_stack(max_connections_per_ip=3) as stack:
        await stack.feed.send(event(), match_result())
        held = [await websockets.connect(stack.ws_url) for _ in range(3)]
        try:
            if transport == "ws":
                with pytest.raises(InvalidStatus) as refused:
                    await websockets.connect(stack.ws_url)
                assert refused.value.response.status_code == 503
            else:
                path = "/sse?markets=fb-1:1x2" if transport == "sse" else "/v1/markets"
                answer = await exchange(
                    stack.node.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()
                )
                assert status_of(answer) == 503
                assert headers_of(answer)["retry-after"] == "5"
            assert stack.node.admission.stats.refused_per_ip == 1
        finally:
            await held.pop().close()
        # A released slot is free again.
        again = await websockets.connect(stack.ws_url)
        for conn in [*held, again]:
            await conn.close()


async def test_the_node_cap_refuses_with_503_instead_of_running_out_of_files() -> None:
    async with running_stack(max_connections=2, max_connections_per_ip=0) as stack:
        held = [await websockets.connect(stack.ws_url) for _ in range(2)]
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(stack.ws_url)
        assert refused.value.response.status_code == 503
        assert stack.node.admission.stats.refused_capacity == 1
        for conn in held:
            await conn.close()
