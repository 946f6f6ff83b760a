"""Recordings: JSON lines replayed through the embedded pipeline, bad lines reported."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from channels.broker import MemoryBroker
from channels.store import MemoryStore
from feeds.embedded import EmbeddedPipeline, epoch_minter
from feeds.model import encode_feed
from feeds.processor import FeedRecord, Processor
from feeds.replay import ReadReport, paced, read_jsonl, write_jsonl
from feeds.sources import SourceError, check_spec, open_source
from feeds.synthetic import MatchDay


async def test_replay_at_speed_zero_rebuilds_the_same_books(tmp_path: Path) -> None:
    messages = list(itertools.islice(MatchDay(seed=3, events=4), 3000))
    path = tmp_path / "day.jsonl"
    assert write_jsonl(path, messages) == 3000
    # Corrupt two lines in place: they are reported and skipped, the rest replays.
    lines = path.read_bytes().splitlines()
    lines.insert(10, b"{not json")
    lines.insert(20, b'{"kind":"odds","event_id":"x"}')
    path.write_bytes(b"\n".join(lines) + b"\n")

    store = MemoryStore()
    report = ReadReport()
    pipeline = EmbeddedPipeline(paced(read_jsonl(path, report), 0), store, MemoryBroker())
    await pipeline.run()

    assert report.read == 3000
    assert [n for n, _ in report.skipped] == [11, 21]
    expected = Processor(epoch_minter(lambda: 0))
    expected.process([FeedRecord("feed", 0, i, encode_feed(m)) for i, m in enumerate(messages)])
    for market_id, book in expected.books.markets.items():
        stored = await store.snapshot(market_id)
        assert stored is not None
        assert (stored.seq, stored.status, stored.selections) == (
            book.snapshot.seq,
            book.snapshot.status,
            book.snapshot.selections,
        )


def test_feed_specs() -> None:
    check_spec("synth")
    check_spec("jsonl:/tmp/x")
    for bad in ("nope", "jsonl:", "xml:/tmp/a"):
        with pytest.raises(SourceError):
            check_spec(bad)
    with pytest.raises(SourceError, match="not found"):
        open_source("jsonl:/nonexistent/file", seed=1, events=1, rate=1, speed=0)
