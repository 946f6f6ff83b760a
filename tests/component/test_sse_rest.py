"""SSE and REST against a real server on 127.0.0.1 (memory broker and store)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import protocol
from server.resume_token import decode_token
from tests.component.stack import (
    T0,
    Books,
    event,
    match_result,
    over_under,
    price_walk,
    running_stack,
    sse_messages,
    status,
)

M1 = "fb-1:1x2"
M2 = "fb-1:ou_2.5"


async def test_sse_has_one_path_first_request_or_after_rest() -> None:
    """``GET /sse`` is served on the socket (chunked, then close) whether it opens a
    connection or follows a REST request on a keep-alive one."""
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result())
        async with http.stream("GET", "/sse?events=fb-1") as direct:
            assert direct.status_code == 200
            assert direct.headers["connection"] == "close"
            assert "server" not in direct.headers
            assert direct.headers["content-type"] == "text/event-stream; charset=utf-8"
        accepted = stack.node.admission.stats.accepted
        assert (await http.get("/healthz")).status_code == 200
        async with http.stream("GET", "/sse?events=fb-1") as routed:
            assert routed.status_code == 200
            assert routed.headers["connection"] == "close"
            assert "server" not in routed.headers
            assert routed.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stack.node.admission.stats.accepted == accepted + 1, "one keep-alive connection"


@pytest.mark.parametrize("path", ["first", "keepalive"])
async def test_sse_event_stream_rebuilds_books_equal_to_rest(path: str) -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under())
        if path == "keepalive":
            assert (await http.get("/healthz")).status_code == 200  # Keep-alive: reused.
        books = Books()
        kinds: list[str] = []
        ids: list[str | None] = []
        stream = sse_messages(http, "/sse?events=fb-1")
        async with asyncio.timeout(10):
            async for event_id, kind, message in stream:
                books.take(message)
                kinds.append(kind)
                ids.append(event_id)
                if books.at(M1) == 1 and books.at(M2) == 1:
                    break
            await stack.feed.send(*price_walk(M1, 10, T0), status(M2, T0 + 50, "suspended", "var"))
            async for event_id, kind, message in stream:
                books.take(message)
                kinds.append(kind)
                ids.append(event_id)
                if books.at(M1) == 11 and books.at(M2) == 2:
                    break
            await stream.aclose()
        assert kinds[:2] == ["ack", "event"]
        assert books.seqs[M1] == list(range(1, 12))
        for market_id in (M1, M2):
            rest = protocol.decode_server((await http.get(f"/v1/markets/{market_id}")).content)
            assert books.markets[market_id] == rest
        # The last id holds the position of every market of the stream.
        assert ids[-1] is not None
        assert decode_token(ids[-1]) == [
            protocol.Position(market_id=m, epoch=books.markets[m].epoch, seq=books.at(m))
            for m in sorted((M1, M2))
        ]


async def test_sse_last_event_id_resumes_exactly() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 3, T0))
        books = Books()
        last_id = None
        stream = sse_messages(http, f"/sse?markets={M1}")
        async with asyncio.timeout(10):
            async for event_id, _, message in stream:
                books.take(message)
                last_id = event_id
                if isinstance(message, protocol.Snapshot):
                    break
            await stream.aclose()
        assert last_id is not None
        assert decode_token(last_id) == [
            protocol.Position(market_id=M1, epoch=books.markets[M1].epoch, seq=4)
        ]
        await stack.feed.send(*price_walk(M1, 5, T0 + 100))
        stream = sse_messages(http, f"/sse?markets={M1}", headers={"Last-Event-ID": last_id})
        async with asyncio.timeout(10):
            async for _, kind, message in stream:
                assert kind != "snapshot", "resumable stream must not restart from a snapshot"
                books.take(message)
                if books.at(M1) == 9:
                    break
            await stream.aclose()
        assert books.seqs[M1] == [4, 5, 6, 7, 8, 9]
        assert books.markets[M1] == stack.feed.book(M1)


@pytest.mark.parametrize("path", ["first", "keepalive"])
async def test_sse_errors_are_json(path: str) -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result())
        for url, status_code, code in [
            ("/sse?markets=nope", 404, "unknown_market"),
            ("/sse", 400, "invalid"),
            ("/sse?markets=fb-1:1x2&conflate_ms=x", 400, "invalid"),
        ]:
            if path == "keepalive":
                assert (await http.get("/healthz")).status_code == 200
            response = await http.get(url)
            assert response.status_code == status_code
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert (body["type"], body["code"]) == ("error", code)


async def test_rest_listing_and_errors() -> None:
    async with running_stack(ops=True) as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(
            event(), match_result(), over_under(), event("fb-2"), match_result("fb-2")
        )
        events = (await http.get("/v1/events")).json()
        assert [e["event_id"] for e in events] == ["fb-1", "fb-2"]
        rows = (await http.get("/v1/markets", params={"event_id": "fb-1"})).json()
        assert {r["market_id"] for r in rows} == {M1, M2}
        for row in rows:
            assert {"market_id", "event_id", "status", "seq", "epoch"} <= set(row)
            assert row["event_id"] == "fb-1"
        assert len((await http.get("/v1/markets")).json()) == 3
        unknown = await http.get("/v1/markets/nope")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "type": "error",
            "code": "unknown_market",
            "message": "unknown market: nope",
        }
        assert (await http.get("/v1/events/nope")).status_code == 404
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404, "operators only"
        metrics = (await http.get(stack.ops_url + "/metrics")).text
        assert "oddstream_connections 0" in metrics


async def test_sse_resume_token_in_the_query_string() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), *price_walk(M1, 3, T0))
        snap = stack.feed.book(M1)
        await stack.feed.send(*price_walk(M1, 2, T0 + 100))
        books = Books()
        books.take(snap)
        token = f"{snap.seq}~{snap.epoch}~{M1}"
        stream = sse_messages(http, f"/sse?markets={M1}&last_event_id={token}")
        async with asyncio.timeout(10):
            async for _, kind, message in stream:
                assert kind != "snapshot"
                books.take(message)
                if books.at(M1) == snap.seq + 2:
                    break
            await stream.aclose()
        assert books.markets[M1] == stack.feed.book(M1)


async def test_readyz_reflects_storage_and_drain() -> None:
    from channels.store import StoreError

    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.get("/readyz")).status_code == 200

        async def down() -> None:
            raise StoreError("Redis at redis://127.0.0.1:1/0: ping failed")

        stack.store.ping = down  # type: ignore[method-assign]
        response = await http.get("/readyz")
        assert response.status_code == 503
        assert "redis://127.0.0.1:1/0" in response.json()["reason"]
        stack.gateway.draining = True
        assert (await http.get("/readyz")).json()["status"] == "draining"


async def test_rest_answers_503_while_storage_fails() -> None:
    from channels.store import StoreError

    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.get("/v1/markets")).status_code == 200

        async def down(event_id: str | None = None) -> list[object]:
            raise StoreError("Redis at redis://127.0.0.1:1/0: summaries failed")

        stack.store.summaries = down  # type: ignore[method-assign]
        response = await http.get("/v1/markets")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "type": "error",
            "code": "unavailable",
            "message": "storage unavailable; retry later",
        }
