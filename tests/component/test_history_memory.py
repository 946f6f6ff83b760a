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
