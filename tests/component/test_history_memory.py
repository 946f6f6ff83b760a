"""``oddstream dev``'s history API: :class:`archive.memory.MemoryHistory` behind the same
routes, fed the messages a pure processor makes of real recordings."""

from __future__ import annotations

from pathlib import Path

import httpx

import protocol
from archive.memory import MemoryHistory
from archive.query import HistoryPage, ResultsPage
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from server.app import build_app
from server.gateway import Gateway
from server.settings import Settings
from tests.integration.test_archive import (
    STORY_RESULTS,
    books_of,
    feed,
    no_epoch,
    reference_stream,
    uof_story,
)
from tests.integration.test_archive import pages as all_pages
from tests.security.session_helpers import SECRET, hs256

GREYHOUNDS = "flumine_1.197931750_greyhound_win.jsonl"


def archive_of(
    streams: dict[str, list[protocol.Snapshot | protocol.Delta]], **kw: int
) -> MemoryHistory:
    history = MemoryHistory(**kw)
    for stream in streams.values():
        for message in stream:
            history.add(protocol.encode(message))
    history.add(b'{"type":"heartbeat","ts":1}')  # Not a market message: ignored.
    return history


def client(history: MemoryHistory) -> httpx.AsyncClient:
    settings = Settings()
    app = build_app(Gateway(settings, MemoryBroker(), MemoryStore()), archive=history)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_the_book_at_an_instant_and_the_changes_since() -> None:
    market_id, stream = max(
        reference_stream(feed(GREYHOUNDS, Path())).items(), key=lambda kv: len(kv[1])
    )
    every_book = books_of(stream)
    start, end = stream[len(stream) // 2].ts, stream[-1].ts
    at = max(i for i, m in enumerate(stream) if m.ts <= start)
    async with client(archive_of({market_id: stream})) as http:
        pages = await all_pages(
            http, f"/v1/markets/{market_id}/history?from={start}&to={end}&limit=7", HistoryPage
        )
        assert pages[0].book is not None
        assert pages[0].book == every_book[at]
        assert [m for p in pages for m in p.changes] == [m for m in stream if start < m.ts <= end]
        unknown = await http.get("/v1/markets/nope/history?from=0&to=1")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_market")


async def test_a_bounded_archive_keeps_the_latest_instants() -> None:
    market_id, stream = max(
        reference_stream(feed(GREYHOUNDS, Path())).items(), key=lambda kv: len(kv[1])
    )
    assert len(stream) > 100
    history = archive_of({market_id: stream}, max_messages=40)
    last = stream[-1].ts
    page = await history.market_history(market_id, last, last, limit=10, cursor=None)
    assert page.book is not None
    assert no_epoch(page.book) == no_epoch(books_of(stream)[-1])
    early = await history.market_history(market_id, stream[0].ts, last, limit=1000, cursor=None)
    assert early.book is None and 0 < len(early.changes) <= 41


async def test_results_of_the_uof_story(tmp_path: Path) -> None:
    async with client(archive_of(reference_stream(uof_story(tmp_path)))) as http:
        pages = await all_pages(http, "/v1/events/sr:match:123/results?limit=2", ResultsPage)
        story = [
            (r.seq, r.selection_id, r.status, r.dead_heat, r.rollback)
            for p in pages
            for r in p.results
            if r.market_id == "sr:match:123/48/score=42.5"
        ]
        assert story == STORY_RESULTS
        missing = await http.get("/v1/events/sr:match:999/results")
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


async def test_history_and_results_need_the_same_rights_as_the_live_api() -> None:
    settings = Settings(auth="jwt", jwt_key=SECRET)
    app = build_app(Gateway(settings, MemoryBroker(), MemoryStore()), archive=MemoryHistory())
    paths = {
        "market:1.1": "/v1/markets/1.1/history?from=0&to=10",
        "event:e1": "/v1/events/e1/results",
        "lobby:football": "/v1/results?sport=football&from=0&to=10",
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for channel, path in paths.items():
            assert (await http.get(path)).status_code == 401, path  # No token.
            other = hs256(channels=["market:nothing"])
            refused = await http.get(path, headers={"authorization": f"Bearer {other}"})
            assert refused.status_code == 403, path
            right = hs256(channels=[channel])
            allowed = await http.get(path, headers={"authorization": f"Bearer {right}"})
            assert allowed.status_code in (200, 404), (path, allowed.text)  # Past the check.
        token = {"authorization": f"Bearer {hs256(channels=['lobby:football'])}"}
        bad = await http.get("/v1/results?sport=football&from=%C2%B2&to=10", headers=token)
        assert bad.status_code == 400, bad.text  # A non-ASCII digit: never a 500.
