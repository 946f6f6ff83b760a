"""The archive on real Kafka and a real MySQL (MariaDB): feed -> books -> ``deltas`` ->
archive -> MySQL history, compared with a pure :class:`Processor` fed the same messages.

Each test has its own topics, consumer groups and database (``oddstream_t<hex>``, dropped
afterwards), so tests sharing the services do not see each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaProducer

import protocol
from archive.consumer import ArchiveConfig, ArchiveRunner
from archive.db import MysqlUrl, connect
from archive.query import History, HistoryPage, ResultsPage
from archive.retention import prune
from archive.rows import RESULT_STATES, Rows
from archive.writer import Writer
from channels.broker import MemoryBroker
from channels.store import MemoryStore
from feeds.betfair import read_betfair
from feeds.books_runner import BooksRunner
from feeds.embedded import epoch_minter
from feeds.kafka_feed import TopicNames, ensure_topics
from feeds.model import FeedMessage, encode_feed, topic_of
from feeds.processor import FeedRecord, Processor
from feeds.replay import ReadReport
from feeds.synthetic import MatchDay
from feeds.uof import read_uof
from protocol import Delta, Snapshot
from tests.component.stack import running_stack
from tests.component.test_real_feeds import settle_rollback_story
from tests.data import FEEDS as DATA
from tests.harness import free_ports
from tests.integration import procs
from tests.integration.test_kafka_books import config, new_group, running, send_all, wait_for
from tests.integration.test_redis import snapshot as redis_snapshot

pytestmark = pytest.mark.integration

WAIT_S = 60.0
T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="session")
def mysql_base() -> MysqlUrl:
    value = os.environ.get("ODDSTREAM_MYSQL", "").strip()
    if not value:
        pytest.fail(
            "ODDSTREAM_MYSQL is not set: the archive tests need a real MySQL/MariaDB; start "
            'the services with: set -a; eval "$(scripts/services.sh up)"; set +a',
            pytrace=False,
        )
    return MysqlUrl.parse(value)


@pytest.fixture
async def mysql(mysql_base: MysqlUrl) -> AsyncIterator[MysqlUrl]:
    """A database of this test's own."""
    name = f"oddstream_t{uuid.uuid4().hex[:12]}"
    admin = await connect(mysql_base, autocommit=True)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield mysql_base.with_database(name)
    finally:
        with contextlib.suppress(Exception):
            admin.close()
        admin = await connect(mysql_base, autocommit=True)
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


async def query(url: MysqlUrl, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await connect(url, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        conn.close()


def reference_stream(messages: Sequence[FeedMessage]) -> dict[str, list[Snapshot | Delta]]:
    """Per market, the messages a pure processor makes of ``messages`` in send order."""
    processor = Processor(epoch_minter())
    records = [
        FeedRecord(topic_of(m), 0, i, encode_feed(m), m.event_id.encode())
        for i, m in enumerate(messages)
    ]
    streams: dict[str, list[Snapshot | Delta]] = {}
    for market_id, payload in processor.process(records).deltas:
        message = protocol.decode_server(payload)
        assert isinstance(message, Snapshot | Delta)
        streams.setdefault(market_id, []).append(message)
    return streams


async def archived_stream(url: MysqlUrl) -> dict[str, list[Snapshot | Delta]]:
    rows = await query(
        url, "SELECT market_id, payload FROM market_messages ORDER BY market_id, epoch, seq"
    )
    streams: dict[str, list[Snapshot | Delta]] = {}
    for market_id, payload in rows:
        message = protocol.decode_server(payload)
        assert isinstance(message, Snapshot | Delta)
        streams.setdefault(market_id, []).append(message)
    return streams


def no_epoch(message: Snapshot | Delta) -> Snapshot | Delta:
    return msgspec.structs.replace(message, epoch="")


def books_of(stream: Sequence[Snapshot | Delta]) -> list[Snapshot]:
    """The book at every seq of one market's stream."""
    first = stream[0]
    assert isinstance(first, Snapshot)
    books = [first]
    for delta in stream[1:]:
        assert isinstance(delta, Delta)
        books.append(protocol.apply(books[-1], delta))
    return books


async def final_results(url: MysqlUrl) -> dict[tuple[str, str], tuple[str, Any, Any]]:
    """Each selection's last result row (a rollback row says ``active``)."""
    rows = await query(
        url,
        "SELECT market_id, selection_id, status, dead_heat, void_factor FROM results "
        "ORDER BY market_id, epoch, seq",
    )
    last: dict[tuple[str, str], tuple[str, Any, Any]] = {}
    for market_id, selection_id, status, dead_heat, void_factor in rows:
        before = last.get((market_id, selection_id), ("active", None, None))
        last[(market_id, selection_id)] = (
            status or before[0],
            dead_heat if dead_heat is not None else before[1],
            void_factor if void_factor is not None else before[2],
        )
    return {k: v for k, v in last.items() if v[0] != "active"}


def expected_results(
    streams: dict[str, list[Snapshot | Delta]],
) -> dict[tuple[str, str], tuple[str, Any, Any]]:
    out = {}
    for market_id, stream in streams.items():
        for s in books_of(stream)[-1].selections:
            if s.status in RESULT_STATES:
                factors = (None if f is None else str(f) for f in (s.dead_heat, s.void_factor))
                out[(market_id, s.selection_id)] = (s.status, *factors)
    return out


def stored(runner: ArchiveRunner) -> int:
    """Records of the (fresh) ``deltas`` topic stored: its partitions start at offset 0.
    Not ``stats.records``, which counts a record read again after a rebalance twice."""
    return sum(runner.positions.values())


async def archive_until(runner: ArchiveRunner, done: Callable[[], bool]) -> None:
    """Run ``runner`` until ``done`` holds (checked after each batch), then stop it."""
    moved = asyncio.Event()
    runner.observers.append(moved.set)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(WAIT_S):
            while not done():
                assert not task.done(), "the archive ended first"
                moved.clear()
                waiter = asyncio.ensure_future(moved.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
    finally:
        runner.stop()
        await task


async def through_books(
    kafka: str, topics: TopicNames, messages: Sequence[FeedMessage]
) -> BooksRunner:
    """Send ``messages`` to the feed topics and run a book processor until it applied
    them all (its deltas are on the ``deltas`` topic)."""
    await send_all(kafka, topics, messages)
    runner = BooksRunner(
        kafka, MemoryStore(), MemoryBroker(), config=config(topics, new_group(), stale_after_s=None)
    )
    async with running(runner):
        await wait_for([runner], lambda: runner.stats.records >= len(messages))
    return runner


async def archived(
    kafka: str, topics: TopicNames, url: MysqlUrl, messages: Sequence[FeedMessage]
) -> ArchiveRunner:
    """``messages`` through a book processor and an archive (stopped when it stored them)."""
    books = await through_books(kafka, topics, messages)
    runner = archive_runner(kafka, url, topics)
    await archive_until(runner, lambda: stored(runner) >= books.stats.deltas)
    return runner


def archive_runner(
    kafka: str, url: MysqlUrl, topics: TopicNames, **overrides: Any
) -> ArchiveRunner:
    settings: dict[str, Any] = {
        "group_id": new_group(),
        "heartbeat_interval_ms": 300,
        "session_timeout_ms": 6_000,
    }
    settings.update(overrides)
    return ArchiveRunner(kafka, url, topics.deltas, ArchiveConfig(**settings))


#: The result rows of the story's market ``sr:match:123/48/score=42.5``: (seq, selection,
#: status, dead heat, rollback): a settlement, its rollback, a dead-heat settlement.
STORY_RESULTS = [
    (3, "1", "winner", None, False),
    (3, "2", "loser", None, False),
    (4, "1", "active", None, True),
    (4, "2", "active", None, True),
    (5, "1", "winner", "0.5", False),
    (5, "2", "winner", "0.5", False),
]


def uof_story(tmp_path: Path) -> list[FeedMessage]:
    """Settlements, a rollback, a dead heat, cancels and a cancel rolled back."""
    for name, raw in settle_rollback_story().items():
        (tmp_path / name).write_bytes(raw)
    return list(read_uof(tmp_path, ReadReport()))


def feed(name: str, tmp_path: Path) -> list[FeedMessage]:
    if name == "uof-story":
        return uof_story(tmp_path)
    return list(read_betfair(DATA / "betfair" / name, ReadReport()))


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recording",
    [
        "bflw_BASIC-1.132153978_horse_win_basic.jsonl",
        "flumine_1.197931750_greyhound_win.jsonl",
        "flumine_1.200806927_cricket_match_odds.jsonl",
        "flumine_SELF-1.181223995_horse_place_inplay.jsonl",
        "nautilus_1-206064380_horse_win_au.jsonl.bz2",
        "uof-story",
    ],
)
async def test_history_reproduces_the_book_at_every_seq(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl, recording: str, tmp_path: Path
) -> None:
    messages = feed(recording, tmp_path)
    runner = await archived(kafka_bootstrap, topics, mysql, messages)
    assert (runner.stats.gaps, runner.stats.malformed) == (0, 0)

    expected = reference_stream(messages)
    in_mysql = await archived_stream(mysql)
    assert sorted(in_mysql) == sorted(expected)
    for market_id, stream in expected.items():
        got = in_mysql[market_id]
        # Every message, so the book at every seq (epochs are minted per process).
        assert [no_epoch(m) for m in got] == [no_epoch(m) for m in stream], market_id
        assert [no_epoch(b) for b in books_of(got)] == [no_epoch(b) for b in books_of(stream)]
    assert await final_results(mysql) == expected_results(expected)
    prices = await query(mysql, "SELECT COUNT(*) FROM prices")
    assert prices[0][0] > 0


async def test_uof_story_rows(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl, tmp_path: Path
) -> None:
    """Settlements, the rollback and the dead heat are rows of their own."""
    await archived(kafka_bootstrap, topics, mysql, uof_story(tmp_path))
    rows = await query(
        mysql,
        "SELECT seq, selection_id, status, dead_heat, is_rollback FROM results "
        "WHERE market_id = %s ORDER BY seq, selection_id",
        "sr:match:123/48/score=42.5",
    )
    assert [(*r[:4], bool(r[4])) for r in rows] == STORY_RESULTS
    changes = await query(
        mysql,
        "SELECT seq, status, reason FROM market_changes WHERE market_id = %s ORDER BY seq",
        "sr:match:123/48/score=42.5",
    )
    assert [c[1:] for c in changes[1:]] == [
        ("suspended", "bet_stop"),
        ("settled", None),
        ("suspended", "rollback"),
        ("settled", None),
    ]


# -- crashes ---------------------------------------------------------------------------


def match_day(count: int) -> list[FeedMessage]:
    return list(islice(MatchDay(seed=11, events=12), count))


async def history_keys(url: MysqlUrl) -> list[tuple[Any, ...]]:
    return await query(url, "SELECT market_id, epoch, seq FROM market_messages")


async def assert_complete(url: MysqlUrl, messages: Sequence[FeedMessage], stored: int) -> None:
    """Every message the books made is stored once: the streams equal the reference."""
    expected = reference_stream(messages)
    archived = await archived_stream(url)
    assert sum(len(s) for s in archived.values()) == stored
    assert {m: [no_epoch(x) for x in s] for m, s in archived.items()} == {
        m: [no_epoch(x) for x in s] for m, s in expected.items()
    }


async def test_archive_sigkill_mid_stream_neither_loses_nor_duplicates(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl
) -> None:
    messages = match_day(20_000)
    books = await through_books(kafka_bootstrap, topics, messages)
    total = books.stats.deltas
    args = [
        "archive",
        "--kafka",
        kafka_bootstrap,
        "--mysql",
        _url(mysql),
        "--topic-prefix",
        topics.prefix,
        "--group",
        new_group(),
        "--archive-batch",
        "500",
        "--log-level",
        "debug",
    ]
    async with procs.processes() as started:
        first = await procs.start(started, "archive-1", args)
        await first.wait_line("archive: stored", timeout=WAIT_S)
        first.kill()
        await first.proc.wait()
        partial = len(await history_keys(mysql))
        assert 0 < partial < total, "killed mid-stream"
        [ops] = free_ports(1)
        second = await procs.start(started, "archive-2", [*args, "--ops-port", str(ops)])
        await _until_stored(second, mysql, total)
        # Its counts on its operator port (docs/observability.md, "Archive").
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{ops}/metrics")).text
        counts = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("oddstream_archive_")
        }
        assert counts["oddstream_archive_records_total"] >= total - partial
        assert counts["oddstream_archive_rebalances_total"] >= 1
        assert counts["oddstream_archive_malformed_total"] == 0
        assert await second.stop() == 0
    keys = await history_keys(mysql)
    assert len(keys) == len(set(keys)) == total
    await assert_complete(mysql, messages, total)


async def test_mysql_restart_mid_stream_the_archive_waits_and_resumes(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl
) -> None:
    messages = match_day(20_000)
    books = await through_books(kafka_bootstrap, topics, messages)
    total = books.stats.deltas
    runner = archive_runner(kafka_bootstrap, mysql, topics, max_records=500)
    started: list[asyncio.Task[None]] = []

    def restart_once() -> None:
        # Killed between two batches (synchronously, so the next write finds it gone);
        # started again meanwhile, while the archive retries.
        if not started and runner.stats.batches >= 2:
            _mariadb("kill")
            started.append(asyncio.create_task(asyncio.to_thread(_mariadb, "start")))

    runner.observers.append(restart_once)
    try:
        await archive_until(runner, lambda: stored(runner) >= total)
    finally:
        await asyncio.gather(*started)
    assert started
    assert runner.stats.retries > 0
    keys = await history_keys(mysql)
    assert len(keys) == len(set(keys)) == total
    await assert_complete(mysql, messages, total)


def _url(url: MysqlUrl) -> str:
    return f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{url.database}"


def _mariadb(command: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "mariadb.sh"), command],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


async def _until_stored(proc: procs.Proc, url: MysqlUrl, total: int) -> None:
    """Wait, line by line of the archive's debug output, until ``total`` messages are
    stored."""
    async with asyncio.timeout(WAIT_S):
        while len(await history_keys(url)) < total:
            await proc.next_line()


# -- the read side: REST on the gateway -------------------------------------------------


async def pages(client: httpx.AsyncClient, url: str, kind: type[T]) -> list[T]:
    """Every page of a paginated answer, following ``next``."""
    out: list[T] = []
    cursor: str | None = None
    for _ in range(1_000):
        page_url = url if cursor is None else f"{url}&cursor={cursor}"
        response = await client.get(page_url)
        assert response.status_code == 200, response.text
        page = msgspec.json.decode(response.content, type=kind)
        out.append(page)
        cursor = page.next  # type: ignore[attr-defined]
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


async def test_rest_market_history_is_the_book_at_an_instant_and_the_changes_since(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl
) -> None:
    messages = feed("flumine_1.197931750_greyhound_win.jsonl", Path())
    await archived(kafka_bootstrap, topics, mysql, messages)
    market_id, stream = max(reference_stream(messages).items(), key=lambda kv: len(kv[1]))
    every_book = books_of(stream)
    start, end = stream[len(stream) // 2].ts, stream[-1].ts
    at = max(i for i, m in enumerate(stream) if m.ts <= start)

    async with (
        running_stack(mysql=_url(mysql)) as stack,
        httpx.AsyncClient(base_url=stack.url) as client,
    ):
        got = await pages(
            client,
            f"/v1/markets/{market_id}/history?from={start}&to={end}&limit=7",
            HistoryPage,
        )
        assert got[0].book is not None
        assert no_epoch(got[0].book) == no_epoch(every_book[at])
        assert all(p.book is None for p in got[1:])
        changes = [no_epoch(m) for p in got for m in p.changes]
        assert changes == [no_epoch(m) for m in stream if start < m.ts <= end]
        assert len(got) > 2

        unknown = await client.get("/v1/markets/nope/history?from=0&to=1")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_market")
        for query_string, code in [
            ("from=0", "bad_request"),
            ("from=0&to=1&limit=0", "bad_request"),
            ("from=0&to=1&limit=99999999", "bad_request"),
            ("from=5&to=1", "bad_request"),
            ("from=-1&to=1", "bad_request"),
            (f"from=0&to=1&cursor={'x' * 300}", "bad_request"),
            ("from=0&to=1&cursor=garbage", "bad_cursor"),
        ]:
            bad = await client.get(f"/v1/markets/{market_id}/history?{query_string}")
            assert (bad.status_code, bad.json()["code"]) == (400, code), query_string


async def test_rest_results_of_an_event_and_by_sport(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl, tmp_path: Path
) -> None:
    await archived(kafka_bootstrap, topics, mysql, uof_story(tmp_path))
    (sport,) = (await query(mysql, "SELECT sport FROM events WHERE event_id = 'sr:match:123'"))[0]

    async with (
        running_stack(mysql=_url(mysql)) as stack,
        httpx.AsyncClient(base_url=stack.url) as client,
    ):
        paged = await pages(client, "/v1/events/sr:match:123/results?limit=2", ResultsPage)
        rows = [r for p in paged for r in p.results]
        whole = (await client.get("/v1/events/sr:match:123/results?limit=1000")).json()
        assert len(rows) == len(whole["results"]) and whole["next"] is None
        assert len(paged) > 1
        story = [
            (r.seq, r.selection_id, r.status, r.dead_heat, r.rollback)
            for r in rows
            if r.market_id == "sr:match:123/48/score=42.5"
        ]
        assert story == STORY_RESULTS
        by_sport = await pages(
            client, f"/v1/results?sport={sport}&from=0&to=10000&limit=3", ResultsPage
        )
        in_window = [r for p in by_sport for r in p.results]
        assert {(r.market_id, r.seq, r.selection_id) for r in rows if r.ts < 10_000} <= {
            (r.market_id, r.seq, r.selection_id) for r in in_window
        }
        assert all(0 <= r.ts < 10_000 for r in in_window)
        none = await client.get("/v1/results?sport=curling&from=0&to=10000")
        assert none.json() == {"results": [], "next": None}
        missing = await client.get("/v1/events/sr:match:999/results")
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
        assert (await client.get("/v1/results?from=0&to=1")).status_code == 400


async def test_prune_before_an_instant_keeps_every_later_instant(mysql: MysqlUrl) -> None:
    streams = reference_stream(feed("flumine_1.197931750_greyhound_win.jsonl", Path()))
    writer = Writer(mysql, "g", "deltas")
    await writer.open()
    rows = Rows()
    for stream in streams.values():
        for message in stream:
            rows.add(protocol.encode(message))
    await writer.write(rows, {})
    await writer.close()
    market_id, stream = max(streams.items(), key=lambda kv: len(kv[1]))
    cut, end = stream[len(stream) // 2].ts, stream[-1].ts
    instants = [*sorted({m.ts for m in stream if m.ts >= cut})[::7], end]
    history = History(mysql)
    try:
        before = [await history.market_history(market_id, t, end, limit=1000) for t in instants]
        stats = await prune(mysql, cut, chunk=50)  # Small statements: the loop runs.
        assert stats.markets == len(streams) and stats.kept == 0 and stats.messages > 0
        after = [await history.market_history(market_id, t, end, limit=1000) for t in instants]
        assert after == before
        early = await history.market_history(market_id, stream[0].ts, end, limit=1000)
        assert early.book is None and early.changes[0] == before[0].book
    finally:
        await history.close()
    left = await query(mysql, "SELECT COUNT(*) FROM prices WHERE ts < %s", cut)
    assert left == [(0,)]
    kept = await query(mysql, "SELECT MIN(ts) FROM market_messages WHERE market_id = %s", market_id)
    assert kept[0][0] <= cut
    again = await prune(mysql, cut)
    assert (again.messages, again.prices) == (0, 0)  # Idempotent.
    result = subprocess.run(  # noqa: ASYNC221 - a short command, its output read once
        [
            str(ROOT / ".venv/bin/oddstream"),
            "archive",
            "--mysql",
            _url(mysql),
            "--kafka",
            "127.0.0.1:1",
            "--prune-before",
            str(end),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "markets=" in result.stdout and "messages_deleted=" in result.stdout


async def test_an_aborted_transaction_on_deltas_is_not_archived(
    kafka_bootstrap: str, topics: TopicNames, mysql: MysqlUrl
) -> None:
    """The archive reads ``deltas`` with ``read_committed``: a processor's transaction
    that was aborted (its owner died or was fenced before committing) leaves no row."""
    await ensure_topics(kafka_bootstrap, 1, topics=topics)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"test-{uuid.uuid4().hex}"
    )
    async with asyncio.timeout(WAIT_S):
        await producer.start()
        try:
            for market, commit in (("m-aborted", False), ("m-kept", True)):
                await producer.begin_transaction()
                value = protocol.encode(redis_snapshot(market))
                await producer.send_and_wait(topics.deltas, value, key=market.encode())
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()
    runner = archive_runner(kafka_bootstrap, mysql, topics)
    # Offsets: 0 the aborted snapshot, 1 its abort marker, 2 the kept one.
    await archive_until(runner, lambda: stored(runner) >= 3)
    assert await query(mysql, "SELECT market_id FROM market_messages") == [("m-kept",)]
