"""Issue 12, item 2: SSE and REST query parameters are bounded and refused with a JSON
``400``, on a connection's first request (the SSE fast path) and on a reused one alike."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from protocol import ErrorCode, ProtocolError
from server.rest import StreamQuery, stream_query
from tests.component.stack import event, match_result, running_stack
from tests.security.conftest import SSE_ANSWERS, WIRE_FUZZ, ThreadedServer, guarded
from tests.security.session_helpers import measure

M1 = "fb-1:1x2"
BAD_QUERIES = [
    f"markets={M1}&conflate_ms=" + "9" * 5_000,  # Was: ValueError, no answer / 500.
    "markets=" + "m" * 300,
    # Past the names bound while within the request-head limit (16 KiB): the count of
    # separators is checked before anything is split.
    "markets=m" + "," * 10_000,
]


async def _raw(port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 2)
    finally:
        writer.close()


@pytest.mark.parametrize("query", BAD_QUERIES, ids=range(len(BAD_QUERIES)))
async def test_bad_sse_query_is_a_400_on_a_first_request(query: str) -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        answer = await _raw(int(stack.url.rsplit(":", 1)[1]), f"/sse?{query}")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b'"code":"invalid"' in answer


async def test_a_query_past_the_head_limit_is_a_431() -> None:
    async with running_stack() as stack:
        query = "markets=" + ",".join(f"m{i}" for i in range(5_001))  # About 28 KB.
        answer = await _raw(int(stack.url.rsplit(":", 1)[1]), f"/sse?{query}")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


async def test_bad_queries_are_400_on_a_reused_connection() -> None:
    async with running_stack() as stack:
        await stack.feed.send(event(), match_result())
        async with httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            for query in BAD_QUERIES:
                for path in ("/sse", "/v1/snapshots"):
                    response = await http.get(f"{path}?{query}")
                    assert response.status_code == 400, (path, query, response.text)
                    assert response.json()["code"] == "invalid"
            long_id = await http.get("/v1/markets/" + "m" * 300)
            assert long_id.status_code == 400


def _parsed(params: dict[str, str]) -> StreamQuery | ProtocolError:
    try:
        return stream_query(QueryParams(params))
    except ProtocolError as exc:
        return exc


@WIRE_FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["markets", "events", "lobbies", "conflate_ms", "x"]),
        st.one_of(
            st.text(max_size=40),
            st.text(alphabet="0123456789²", max_size=6000),
            st.lists(st.text(min_size=1, max_size=300), max_size=60).map(",".join),
        ),
    )
)
def test_fuzz_stream_query(server: ThreadedServer, params: dict[str, str]) -> None:
    """Any query: a bounded request, or ``invalid``, fast and small in the parser. On the
    wire: that refusal (or ``431`` past the head limit); for a query it accepts, the
    stream or the refusal of its values (``conflate_ms`` out of range, unknown names).
    The neighbour's stream goes on throughout."""
    with measure() as cost:
        outcome = _parsed(params)
    if isinstance(outcome, StreamQuery):
        assert outcome.markets or outcome.events or outcome.lobbies
        assert all(len(n) <= 256 for n in (*outcome.markets, *outcome.events, *outcome.lobbies))
        assert outcome.conflate_ms is None or 0 <= outcome.conflate_ms < 10**9
    else:
        assert outcome.code == ErrorCode.INVALID
    assert cost.cpu_seconds < 0.05
    with guarded(server, "SSE query"):
        request = f"GET /sse?{urlencode(params)} HTTP/1.1\r\nhost: x\r\n\r\n"
        status, data = server.answer(request.encode())
    assert status in SSE_ANSWERS, data[:200]
    assert SSE_ANSWERS[status] in data, data[:200]
    if not isinstance(outcome, StreamQuery):
        assert status in (400, 431), data[:200]
