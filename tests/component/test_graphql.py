"""GraphQL queries at ``/graphql`` (``docs/graphql.md``): the same read side, rights and
bounds as REST, errors as GraphQL errors (never a traceback)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import protocol
from archive.memory import MemoryHistory
from archive.query import HistoryPage
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from server.app import build_app
from server.gateway import Gateway
from server.settings import Settings, SettingsError
from tests.component.stack import event, match_result, odds, over_under, running_stack
from tests.component.test_history_memory import GREYHOUNDS, archive_of
from tests.integration.test_archive import feed, reference_stream
from tests.security.session_helpers import SECRET, hs256

M1 = "fb-1:1x2"
HISTORY = """query($m: ID!, $from: Long!, $to: Long!, $cursor: String) {
  marketHistory(marketId: $m, from: $from, to: $to, limit: 7, cursor: $cursor) {
    book { type seq epoch crc message } changes { seq message } next } }"""


def client(history: MemoryHistory | None = None, **settings: Any) -> httpx.AsyncClient:
    gateway = Gateway(Settings(**settings), MemoryBroker(), MemoryStore())
    app = build_app(gateway, archive=history)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def post(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await http.post("/graphql", json=body, headers=headers)


def code(response: httpx.Response) -> str:
    errors = response.json()["errors"]
    return str(errors[0]["extensions"]["code"])


async def test_live_queries_answer_what_rest_answers() -> None:
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        await stack.feed.send(event(), match_result(), over_under(), odds(M1, 2, home="2.20"))
        query = (
            '{ events { eventId sport startTime } markets(eventId: "fb-1") { marketId seq } '
            'market(id: "fb-1:1x2") { type seq epoch crc message } }'
        )
        answer = await post(http, {"query": query})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert data["events"] == [
            {"eventId": "fb-1", "sport": "football", "startTime": 1_700_003_600_000}
        ]
        rest = (await http.get("/v1/markets", params={"event_id": "fb-1"})).json()
        assert data["markets"] == [{"marketId": m["market_id"], "seq": m["seq"]} for m in rest]
        book = protocol.decode_server(msgspec.json.encode(data["market"]["message"]))
        assert book == stack.feed.book(M1)
        assert (data["market"]["seq"], data["market"]["crc"]) == (book.seq, book.crc)
        got = await http.get("/graphql", params={"query": '{ market(id: "nope") { seq } }'})
        assert got.json() == {"data": {"market": None}}


async def test_history_pages_are_the_rest_pages() -> None:
    market_id, stream = max(
        reference_stream(feed(GREYHOUNDS, Path())).items(), key=lambda kv: len(kv[1])
    )
    start, end = stream[len(stream) // 3].ts, stream[-1].ts
    async with client(archive_of({market_id: stream})) as http:
        cursor = None
        while True:
            variables = {"m": market_id, "from": start, "to": end, "cursor": cursor}
            answer = await post(http, {"query": HISTORY, "variables": variables})
            page = answer.json()["data"]["marketHistory"]
            params: dict[str, Any] = {"from": start, "to": end, "limit": 7}
            if cursor is not None:
                params["cursor"] = cursor
            rest = msgspec.json.decode(
                (await http.get(f"/v1/markets/{market_id}/history", params=params)).content,
                type=HistoryPage,
            )
            assert [c["message"] for c in page["changes"]] == [
                msgspec.json.decode(protocol.encode(m)) for m in rest.changes
            ]
            if cursor is None:
                assert rest.book is not None
                assert page["book"]["message"] == msgspec.json.decode(protocol.encode(rest.book))
            assert page["next"] == rest.next
            cursor = page["next"]
            if cursor is None:
                break
        unknown = await post(http, {"query": HISTORY, "variables": {"m": "x", "from": 0, "to": 1}})
        assert code(unknown) == "unknown_market"
    async with client() as http:  # No archive: the live half still answers.
        none = await post(http, {"query": HISTORY, "variables": {"m": "x", "from": 0, "to": 1}})
        assert code(none) == "unavailable"


async def test_the_same_rights_as_rest() -> None:
    queries = {
        "market:m1": '{ market(id: "m1") { seq } }',
        "event:e1": '{ eventResults(eventId: "e1") { next } }',
        "lobby:football": '{ results(sport: "football", from: 0, to: 10) { next } }',
    }
    async with client(MemoryHistory(), auth="jwt", jwt_key=SECRET) as http:
        for channel, query in queries.items():
            assert code(await post(http, {"query": query})) == "unauthorized", channel
            other = f"Bearer {hs256(channels=['market:nothing'])}"
            assert code(await post(http, {"query": query}, authorization=other)) == "forbidden"
            right = f"Bearer {hs256(channels=[channel])}"
            allowed = (await post(http, {"query": query}, authorization=right)).json()
            assert all(e["extensions"]["code"] == "not_found" for e in allowed.get("errors", []))
        assert (await post(http, {"query": "{ markets { marketId } }"})).json() == {
            "data": {"markets": []}
        }


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{ events { name } }" + " " * 9000, "too_large"),
        ("{ events { name " + "x: name " * 300 + "} }", "too_complex"),
        (
            "{ events { ...A } } fragment A on Event { ...B ...B ...B ...B } "
            "fragment B on Event { ...C ...C ...C ...C ...C ...C ...C ...C } "
            "fragment C on Event { name ...D ...D } "
            "fragment D on Event { name home away sport }",
            "too_complex",
        ),
        ("{ events { ...A } } fragment A on Event { ...A }", "graphql_validation_failed"),
        ("{ events { name }", "graphql_parse_failed"),
        ("{ nothing }", "graphql_validation_failed"),
        ('subscription { market(id: "m") { seq } }', "bad_request"),
    ],
)
async def test_documents_are_bounded_before_they_are_run(document: str, expected: str) -> None:
    async with client() as http:
        answer = await post(http, {"query": document})
        assert (answer.status_code, code(answer)) == (400, expected), answer.text


async def test_depth_and_malformed_requests() -> None:
    async with client(graphql_max_depth=2) as http:
        deep = await post(
            http, {"query": '{ marketHistory(marketId: "m", from: 0, to: 1) { book { seq } } }'}
        )
        assert code(deep) == "too_deep"
        nested = b'{"query": "{ events { name } }", "variables": {"v": ' + b"[" * 30_000
        for body in (b"[", b'{"query": 3}', b'{"variables": {}}', nested + b"]" * 30_000 + b"}}"):
            bad = await http.post(
                "/graphql", content=body, headers={"content-type": "application/json"}
            )
            assert (bad.status_code, code(bad)) == (400, "bad_request"), body
        wrong = await post(
            http,
            {
                "query": 'query($t: Long!) { results(sport: "f", from: $t, to: 1) { next } }',
                "variables": {"t": 2**60},
            },
        )
        assert (wrong.status_code, code(wrong)) == (400, "bad_request")
        long = await post(http, {"query": f'{{ events(sport: "{"x" * 300}") {{ name }} }}'})
        assert code(long) == "bad_request"
        text = await http.post("/graphql", content=b"{ events { name } }")
        assert code(text) == "bad_request"


class Failing(MemoryHistory):
    async def event_results(self, event_id: str, *, limit: int, cursor: str | None) -> Any:
        raise RuntimeError("secret detail")


async def test_internal_errors_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    async with client(Failing()) as http:
        answer = await post(
            http, {"query": '{ eventResults(eventId: "e") { next } events { name } }'}
        )
        body = answer.json()
        assert body["errors"] == [
            {
                "message": "internal error",
                "path": ["eventResults"],
                "extensions": {"code": "internal"},
            }
        ]
        assert body["data"] is None
        assert "secret detail" not in answer.text
        assert "secret detail" in caplog.text


async def test_persisted_queries(tmp_path: Path) -> None:
    document = "{ events { eventId } }"
    digest = hashlib.sha256(document.encode()).hexdigest()
    registry = tmp_path / "persisted.json"
    registry.write_text(msgspec.json.encode({digest: document}).decode())
    persisted = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}}}
    async with client(graphql_persisted=str(registry), graphql_accept="persisted") as http:
        assert (await post(http, persisted)).json() == {"data": {"events": []}}
        assert code(await post(http, {"query": document})) == "forbidden"
        unknown = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}}
        assert code(await post(http, unknown)) == "PERSISTED_QUERY_NOT_FOUND"
    registry.write_text(msgspec.json.encode({"0" * 64: document}).decode())
    with pytest.raises(SettingsError, match="SHA-256"):
        client(graphql_persisted=str(registry))
