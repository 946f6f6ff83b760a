"""Real recordings replayed at speed 0 through the embedded pipeline into a running server.

Betfair: for every recording and envelope in ``tests/data/feeds/betfair``, the books served
over REST equal the final state this module computes on its own from the raw JSON (a
small fold, independent of ``feeds.betfair``), and a WebSocket client sees exactly the
recording's OPEN->SUSPENDED and SUSPENDED->OPEN transitions, each with the board the
recording shows at that moment. UOF: the real messages, and a story built around them,
produce the transitions documented in ``docs/feeds.md`` with contiguous ``seq``.

The recordings are in the repository (``tests/data/feeds``, README and licences there); a
missing file fails these tests, never skips them.
"""

from __future__ import annotations

import asyncio
import bz2
import functools
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets

import protocol
from channels.store import Batch, MemoryStore
from feeds.betfair import read_betfair
from feeds.embedded import EmbeddedPipeline
from feeds.model import FeedMarket, FeedMessage
from feeds.replay import ReadReport, paced
from feeds.sources import open_source
from feeds.uof import read_uof
from tests.component.stack import Books, Stack, running_stack
from tests.data import FEEDS as DATA

BETFAIR = DATA / "betfair"
UOF = DATA / "uof"

#: Every Betfair stream file in the data set (README.md there). The catalogue is a
#: REST answer, not a stream: it is listed apart so that a new file cannot go unnoticed.
RECORDINGS = [
    "bflw_BASIC-1.132153978_horse_win_basic.jsonl",
    "flumine_1.197931750_greyhound_win.jsonl",
    "flumine_1.200806927_cricket_match_odds.jsonl",
    "flumine_SELF-1.181223995_horse_place_inplay.jsonl",
    "nautilus_1-206064380_horse_win_au.jsonl.bz2",
    "envelope/bflw_streaming_connection.json",
    "envelope/bflw_streaming_mcm_HEARTBEAT.json",
    "envelope/bflw_streaming_mcm_RESUB_DELTA.json",
    "envelope/bflw_streaming_mcm_SUB_IMAGE.json",
    "envelope/bflw_streaming_mcm_UPDATE_md.json",
    "envelope/bflw_streaming_mcm_update.json",
    "envelope/bflw_streaming_status.json",
]
NOT_STREAMS = ["flumine_catalogue_1.197931750.json"]
UOF_FILES = [
    "go-uof-sdk_bet_cancel.xml",
    "go-uof-sdk_bet_settlement.xml",
    "go-uof-sdk_odds_change-0.xml",
    "go-uof-sdk_rollback_bet_cancel.xml",
]


def data_file(path: Path) -> Path:
    assert path.is_file(), (
        f"test data missing: {path}. The real recordings must be present at "
        f"{DATA} (beside the repository), as in CI."
    )
    return path


def test_every_data_file_is_covered() -> None:
    assert BETFAIR.is_dir(), f"test data directory missing: {BETFAIR}"
    assert UOF.is_dir(), f"test data directory missing: {UOF}"
    present = sorted(str(p.relative_to(BETFAIR)) for p in BETFAIR.rglob("*") if p.is_file())
    assert present == sorted(RECORDINGS + NOT_STREAMS)
    assert sorted(p.name for p in UOF.iterdir()) == sorted(UOF_FILES)


# ---------------------------------------------------------------------------
# The independent fold: what a recording says, read straight from its JSON
# ---------------------------------------------------------------------------

SPORTS = {
    "1": "football",
    "2": "tennis",
    "4": "cricket",
    "7": "horse_racing",
    "4339": "greyhounds",
}
STATUS = {"OPEN": "open", "SUSPENDED": "suspended", "INACTIVE": "suspended", "CLOSED": "closed"}
RESULT = {"WINNER": "winner", "PLACED": "winner", "LOSER": "loser"}
REMOVED = {"REMOVED", "REMOVED_VACANT", "HIDDEN"}
# Which ladders a board shows, by preference (docs/feeds.md): display, best (both keyed
# by level), full depth (keyed by price).
FAMILIES = [("bdatb", "bdatl"), ("batb", "batl"), ("atb", "atl")]
BY_LEVEL = {"bdatb", "bdatl", "batb", "batl"}

Board = dict[str, tuple[Decimal | None, tuple[Any, ...], tuple[Any, ...]]]


@dataclass
class FoldedMarket:
    status: str | None = None  # Betfair's, e.g. "OPEN"
    runners: dict[str, str] = field(default_factory=dict)  # selection -> Betfair status
    ladders: dict[str, dict[str, dict[Any, Any]]] = field(default_factory=dict)
    ltp: dict[str, Decimal] = field(default_factory=dict)
    families: set[int] = field(default_factory=set)
    adjustment: dict[str, Decimal] = field(default_factory=dict)
    transitions: list[tuple[str, Board]] = field(default_factory=list)
    boards: dict[int, Board] = field(default_factory=dict)  # by publish time, the last
    last_pt: int = 0
    settled: bool = False
    event: tuple[str, str] = ("", "")  # event id, event type id
    in_play: bool = False  # ever

    def board(self, only: Iterable[str] | None = None, base: Board | None = None) -> Board:
        """What a board shows for each runner: (best back price, back levels, lay
        levels); recomputed for ``only`` those runners when a ``base`` is given."""
        family = FAMILIES[min(self.families)] if self.families else None
        board: Board = dict(base or {})
        for sid in self.runners if only is None else only:
            status = self.runners.get(sid)
            if family is None or status is None or status in REMOVED:
                board[sid] = (None, (), ())
                continue
            back_key, lay_key = family
            back = self.ladders.get(sid, {}).get(back_key, {})
            lay = self.ladders.get(sid, {}).get(lay_key, {})
            if back_key == "atb":
                backs = tuple(sorted(back.items(), reverse=True)[:3])
                lays = tuple(sorted(lay.items())[:3])
            else:
                backs = tuple(back[level] for level in sorted(back)[:3])
                lays = tuple(lay[level] for level in sorted(lay)[:3])
            board[sid] = (backs[0][0] if backs else None, backs, lays)
        return {sid: board[sid] for sid in self.runners}


def sid_of(rc: dict[str, Any]) -> str:
    hc = rc.get("hc")
    return str(rc["id"]) if not hc else f"{rc['id']}:{hc}"


@functools.cache
def fold(path: Path) -> dict[str, FoldedMarket]:
    """Each market defined in the recording, as the recording says it ends (read only)."""
    markets: dict[str, FoldedMarket] = {}
    for line in lines_of(path):
        record = json.loads(line, parse_float=Decimal)
        if record.get("op") != "mcm":
            continue
        for mc in record.get("mc", []):
            if mc["id"] not in markets and "marketDefinition" not in mc:
                continue  # Never defined: nothing to show.
            market = markets.setdefault(mc["id"], FoldedMarket())
            if market.settled:
                continue
            image = mc.get("img") or record.get("ct") == "SUB_IMAGE"
            if image:
                market.ladders.clear()
                market.ltp.clear()
            touched = set()
            for rc in [] if market.status == "CLOSED" else mc.get("rc", []):  # prices freeze
                ladders = market.ladders.setdefault(sid_of(rc), {})
                touched.add(sid_of(rc))
                for family, keys in enumerate(FAMILIES):
                    for key in keys:
                        if key in rc:
                            market.families.add(family)
                            merge(ladders.setdefault(key, {}), rc[key], key in BY_LEVEL)
                if rc.get("ltp"):
                    market.ltp[sid_of(rc)] = rc["ltp"]
            definition = mc.get("marketDefinition")
            if definition is not None:
                market.event = (definition.get("eventId") or mc["id"], definition["eventTypeId"])
                market.in_play |= definition["inPlay"]
                for r in definition["runners"]:
                    market.runners[sid_of(r)] = r["status"]
                    if "adjustmentFactor" in r:
                        market.adjustment[sid_of(r)] = r["adjustmentFactor"]
            last = market.boards.get(market.last_pt) if market.boards else None
            whole = image or definition is not None or last is None
            board = market.board() if whole else market.board(touched, last)
            market.boards[record["pt"]] = board
            market.last_pt = record["pt"]
            if definition is None:
                continue
            before, market.status = market.status, definition["status"]
            if (before, market.status) in {("OPEN", "SUSPENDED"), ("SUSPENDED", "OPEN")}:
                market.transitions.append((STATUS[market.status], board))
            market.settled = market.status == "CLOSED" and any(
                s in RESULT for s in market.runners.values()
            )
    return markets


def merge(ladder: dict[Any, Any], changes: list[list[Any]], by_level: bool) -> None:
    """[level, price, size] or [price, size] changes; size 0 removes the level."""
    for change in changes:
        key, value = (change[0], tuple(change[1:])) if by_level else (change[0], change[1])
        if change[-1] == 0:
            ladder.pop(key, None)
        else:
            ladder[key] = value


def lines_of(path: Path) -> Iterator[bytes]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as lines:
        yield from (line for line in lines if line.strip())


def expected_status(market: FoldedMarket) -> str:
    assert market.status is not None
    if market.status == "CLOSED" and any(s in RESULT for s in market.runners.values()):
        return "settled"
    return STATUS[market.status]


def board_of(snapshot: protocol.Snapshot) -> Board:
    return {s.selection_id: (s.price, s.back, s.lay) for s in snapshot.selections}


# ---------------------------------------------------------------------------
# Replay into a running server
# ---------------------------------------------------------------------------


class WatchedStore:
    """The stack's store, with an event set once given markets are all stored."""

    def __init__(self, inner: MemoryStore, markets: Iterable[str]):
        self.inner = inner
        self.waiting = set(markets)
        self.all_stored = asyncio.Event()
        if not self.waiting:
            self.all_stored.set()

    async def write(self, batch: Batch) -> None:
        await self.inner.write(batch)
        self.waiting -= set(batch.snapshots)
        if not self.waiting:
            self.all_stored.set()


async def gated(
    head: list[FeedMessage], tail: list[FeedMessage], gate: asyncio.Event
) -> AsyncIterator[FeedMessage]:
    """The messages at speed 0, held after ``head`` until ``gate`` opens."""
    async for message in paced(head, 0):
        yield message
    await gate.wait()
    async for message in paced(tail, 0):
        yield message


def split_after_creations(messages: list[FeedMessage]) -> tuple[list[FeedMessage], set[str]]:
    """(head, markets): the messages up to the last market creation, and the markets."""
    created: set[str] = set()
    cut = 0
    for i, message in enumerate(messages):
        if isinstance(message, FeedMarket) and message.market_id not in created:
            created.add(message.market_id)
            cut = i + 1
    return messages[:cut], created


@dataclass
class Watcher:
    """A WebSocket client following markets; counts suspend/reopen transitions."""

    books: Books = field(default_factory=Books)
    transitions: dict[str, list[tuple[str, Board]]] = field(default_factory=dict)
    boards: dict[str, dict[int, Board]] = field(default_factory=dict)  # by delta ts, the last

    def take(self, message: protocol.ServerMessage) -> None:
        before = (
            self.books.markets.get(message.market_id)
            if isinstance(message, protocol.Delta)
            else None
        )
        self.books.take(message)
        if before is None or not isinstance(message, protocol.Delta):
            return
        after = self.books.markets[message.market_id]
        self.boards.setdefault(message.market_id, {})[message.ts] = board_of(after)
        if (before.status, after.status) in {("open", "suspended"), ("suspended", "open")}:
            self.transitions.setdefault(message.market_id, []).append(
                (after.status, board_of(after))
            )


async def replay_and_watch(
    stack: Stack, messages: list[FeedMessage]
) -> tuple[EmbeddedPipeline, Watcher, set[str]]:
    """Replay ``messages`` at speed 0 while a WebSocket client follows every market
    from its creation (seq 1) to the end. The client reads as the replay runs; its
    queue limit is raised because at speed 0 any real client is a slow consumer, and
    this test is about what it receives, not about back-pressure."""
    head, markets = split_after_creations(messages)
    store = WatchedStore(stack.store, markets)
    gate = asyncio.Event()
    pipeline = EmbeddedPipeline(
        gated(head, messages[len(head) :], gate),
        store,  # type: ignore[arg-type]
        stack.feed.broker,
    )
    watcher = Watcher()
    target: dict[str, int] = {}
    caught_up = asyncio.Event()

    def check() -> None:
        if all(watcher.books.at(m) >= seq for m, seq in target.items()):
            caught_up.set()

    async with asyncio.TaskGroup() as tasks:
        run = tasks.create_task(pipeline.run())
        await asyncio.wait_for(store.all_stored.wait(), 10)
        async with websockets.connect(stack.ws_url, max_size=None) as conn:

            async def read() -> None:
                while True:
                    watcher.take(protocol.decode_server(await conn.recv()))
                    if target:
                        check()

            if markets:
                await conn.send(
                    msgspec.json.encode({"type": "subscribe", "markets": sorted(markets)})
                )
                while any(watcher.books.at(m) < 1 for m in markets):
                    watcher.take(protocol.decode_server(await asyncio.wait_for(conn.recv(), 10)))
                # Every market is at seq 1: the client sees every later transition.
                assert {m: watcher.books.at(m) for m in markets} == dict.fromkeys(markets, 1)
            reader = tasks.create_task(read())
            gate.set()
            await asyncio.wait_for(run, 60)
            for market_id in markets:
                snapshot = await stack.store.snapshot(market_id)
                assert snapshot is not None
                target[market_id] = snapshot.seq
            check()
            await asyncio.wait_for(caught_up.wait(), 30)
            reader.cancel()
    return pipeline, watcher, markets


@pytest.mark.parametrize("name", RECORDINGS)
async def test_betfair_recording_served_books_match_the_recording(name: str) -> None:
    path = data_file(BETFAIR / name)
    expected = fold(path)
    report = ReadReport()
    messages = list(read_betfair(path, report))
    never_defined = {
        mc["id"]
        for line in lines_of(path)
        for mc in json.loads(line).get("mc", [])
        if mc["id"] not in expected
    }
    assert len(report.skipped) == len(never_defined), report.skipped[:5]

    async with (
        running_stack(queue_frames=1_000_000) as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
    ):
        pipeline, watcher, markets = await replay_and_watch(stack, messages)
        assert pipeline.dead_letters == 0
        assert markets == set(expected)
        for market_id, folded in expected.items():
            response = await http.get(f"/v1/markets/{market_id}")
            assert response.status_code == 200
            served = protocol.decode_server(response.content)
            assert isinstance(served, protocol.Snapshot)
            # The client's rebuilt book (snapshot + every delta) is the server's.
            assert watcher.books.markets[market_id] == served
            assert watcher.books.seqs[market_id] == list(range(1, served.seq + 1))

            assert served.status == expected_status(folded)
            by_id = {s.selection_id: s for s in served.selections}
            assert set(by_id) == set(folded.runners)
            for sid, bf_status in folded.runners.items():
                shown = by_id[sid].status
                if bf_status in REMOVED:
                    assert shown == "removed", sid
                elif served.status == "settled":
                    assert shown == RESULT.get(bf_status, "loser"), sid
                else:
                    assert shown == "active", sid
                assert by_id[sid].ltp == folded.ltp.get(sid), sid
                assert by_id[sid].adjustment == folded.adjustment.get(sid), sid
            assert board_of(served) == folded.board()

            seen = watcher.transitions.get(market_id, [])
            assert len(seen) == len(folded.transitions)
            assert seen == folded.transitions
            # After every delta, the board equals the recording's at that publish time.
            boards = watcher.boards.get(market_id, {})
            assert len(boards) >= min(10, len(folded.boards) // 2)
            wrong = [ts for ts, board in boards.items() if folded.boards[ts] != board]
            assert not wrong, (len(wrong), wrong[:3])

            event_id, type_id = folded.event
            event = protocol.decode_server((await http.get(f"/v1/events/{event_id}")).content)
            assert isinstance(event, protocol.EventState)
            assert event.sport == SPORTS[type_id]
            siblings = [m for m in expected.values() if m.event == folded.event]
            if all(m.status == "CLOSED" for m in siblings):
                assert event.phase == "ended"
            else:
                assert event.phase == ("live" if any(m.in_play for m in siblings) else "pre")


def test_the_fold_sees_what_the_data_readme_describes() -> None:
    """A check on the check: the fold reads the recordings the way their README says."""
    self_place = fold(data_file(BETFAIR / "flumine_SELF-1.181223995_horse_place_inplay.jsonl"))
    market = self_place["1.181223995"]
    # "12 suspend/reopen cycles": 12 suspensions, 11 reopenings, then CLOSED.
    assert [t for t, _ in market.transitions] == ["suspended", "open"] * 11 + ["suspended"]
    assert sorted(s for s in market.runners.values()) == ["LOSER"] * 7 + ["WINNER"] * 3
    moe = fold(data_file(BETFAIR / "nautilus_1-206064380_horse_win_au.jsonl.bz2"))["1.206064380"]
    assert len(moe.transitions) == 7  # "4 OPEN/SUSPENDED cycles", the last ending CLOSED
    assert list(moe.runners.values()).count("REMOVED") == 1
    cricket = fold(data_file(BETFAIR / "flumine_1.200806927_cricket_match_odds.jsonl"))
    assert len(cricket["1.200806927"].transitions) == 3  # OPEN-SUSPENDED-OPEN-SUSPENDED


# ---------------------------------------------------------------------------
# UOF
# ---------------------------------------------------------------------------


async def deltas_of(store: MemoryStore, market_id: str) -> tuple[protocol.Snapshot, list[Any]]:
    """The market's book and its whole delta stream (seq 2...), as a resuming client
    at seq 1 would receive it."""
    snapshot = await store.snapshot(market_id)
    assert snapshot is not None, market_id
    payloads = await store.history(market_id, snapshot.epoch, 1)
    assert payloads is not None, market_id
    deltas = [protocol.decode_server(p) for p in payloads]
    assert [d.seq for d in deltas] == list(range(2, snapshot.seq + 1))  # type: ignore[union-attr]
    return snapshot, deltas


def transitions(deltas: list[Any]) -> list[tuple[int, str, str | None]]:
    """(seq, status, reason in force) of each delta that changes the status (every
    market here was created without a reason)."""
    reason: str | None = None
    seen = []
    for delta in deltas:
        if delta.reason is not msgspec.UNSET:
            reason = delta.reason
        if delta.status is not msgspec.UNSET:
            seen.append((delta.seq, delta.status, reason))
    return seen


async def replay(stack: Stack, messages: Iterable[FeedMessage]) -> EmbeddedPipeline:
    pipeline = EmbeddedPipeline(paced(messages, 0), stack.store, stack.feed.broker)
    await asyncio.wait_for(pipeline.run(), 30)
    return pipeline


async def test_uof_real_messages_in_file_name_order() -> None:
    for name in UOF_FILES:
        data_file(UOF / name)
    report = ReadReport()
    async with running_stack() as stack, httpx.AsyncClient(base_url=stack.url) as http:
        pipeline = await replay(stack, read_uof(UOF, report))
        assert pipeline.dead_letters == 0
        # bet_cancel (a time window: the market stands), bet_settlement, odds_change read;
        # rollback_bet_cancel names a market never cancelled: reported, skipped.
        assert report.read == 4
        assert [(n, r.split(":")[0]) for n, r in report.skipped] == [
            (4, "go-uof-sdk_rollback_bet_cancel.xml")
        ]
        settled = (await http.get("/v1/markets", params={"event_id": "sr:match:16807109"})).json()
        assert {s["status"] for s in settled} == {"settled"}
        assert len(settled) == 5
        snapshot, deltas = await deltas_of(stack.store, "sr:match:16807109/201")
        assert transitions(deltas) == [(2, "settled", None)]
        assert [(s.selection_id, s.status, s.void_factor) for s in snapshot.selections] == [
            ("863", "void", None),
            ("864", "loser", Decimal("0.5")),
            ("861", "winner", Decimal("0.5")),
            ("862", "loser", None),
        ]
        heat, _ = await deltas_of(stack.store, "sr:match:16807109/535/variant=pre:markettext:52751")
        winners = [(s.selection_id, s.dead_heat) for s in heat.selections if s.status == "winner"]
        assert winners == [
            ("pre:outcometext:6388892", Decimal("0.5")),
            ("pre:outcometext:6408970", Decimal("0.5")),
        ]
        live = (await http.get("/v1/markets", params={"event_id": "sr:match:123"})).json()
        assert {(s["market_id"].split("/")[1], s["status"]) for s in live} == {
            ("47", "open"),
            ("48", "open"),
            ("123", "suspended"),
            ("188", "open"),
            ("899", "open"),
            ("888", "open"),
            ("891", "open"),
        }
        event = (await http.get("/v1/events/sr:match:123")).json()
        assert (event["phase"], event["score"], event["clock"]["period"]) == ("live", [2, 2], "2H")


def uof(root: str, event: str, ts: int, body: str = "", **attrs: str) -> bytes:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return (
        f'<{root} event_id="{event}" timestamp="{ts}" product="1"{extra}>{body}</{root}>'.encode()
    )


def settle_rollback_story() -> dict[str, bytes]:
    """UOF messages by file name: the real odds_change opens the markets; a bet stop, a
    settlement, its rollback, a new settlement, a cancel and its rollback (the real
    rollback_bet_cancel, for its own event) follow."""
    return {
        "01.xml": data_file(UOF / "go-uof-sdk_odds_change-0.xml").read_bytes(),
        "02.xml": uof("bet_stop", "sr:match:123", 2000, groups="all"),
        "03.xml": uof(
            "bet_settlement",
            "sr:match:123",
            3000,
            '<outcomes><market id="48" specifiers="score=42.5">'
            '<outcome id="1" result="1"/><outcome id="2" result="0"/></market></outcomes>',
        ),
        "04.xml": uof(
            "rollback_bet_settlement",
            "sr:match:123",
            4000,
            '<market id="48" specifiers="score=42.5"/>',
        ),
        "05.xml": uof(
            "bet_settlement",
            "sr:match:123",
            5000,
            '<outcomes><market id="48" specifiers="score=42.5">'
            '<outcome id="1" result="1" dead_heat_factor="0.5"/>'
            '<outcome id="2" result="1" dead_heat_factor="0.5"/></market></outcomes>',
        ),
        "06.xml": uof(
            "bet_cancel", "sr:match:123", 6000, '<market id="47" specifiers="score=41.5"/>'
        ),
        "07.xml": uof(
            "odds_change",
            "sr:match:4444",
            1230,
            '<odds><market id="48" specifiers="score=41.5">'
            '<outcome id="1" odds="1.5" active="1"/><outcome id="2" odds="2.5" active="1"/>'
            "</market></odds>",
        ),
        "08.xml": uof(
            "bet_cancel", "sr:match:4444", 1235, '<market id="48" specifiers="score=41.5"/>'
        ),
        "09.xml": data_file(UOF / "go-uof-sdk_rollback_bet_cancel.xml").read_bytes(),
    }


async def test_uof_settle_rollback_cancel_story(tmp_path: Path) -> None:
    """The real odds_change opens the markets; a bet stop, a settlement, its rollback,
    a new settlement, a cancel and its rollback (the real rollback_bet_cancel, for its
    own event) follow. Each is an ordinary delta with the next seq."""
    files = settle_rollback_story()
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    report = ReadReport()
    async with running_stack() as stack:
        pipeline = await replay(stack, read_uof(tmp_path, report))
        assert (pipeline.dead_letters, report.skipped) == (0, [])

        book, deltas = await deltas_of(stack.store, "sr:match:123/48/score=42.5")
        assert transitions(deltas) == [
            (2, "suspended", "bet_stop"),
            (3, "settled", None),
            (4, "suspended", "rollback"),
            (5, "settled", None),
        ]
        assert [(c.selection_id, c.status) for c in deltas[1].selections] == [
            ("1", "winner"),
            ("2", "loser"),
        ]
        assert [(c.selection_id, c.status) for c in deltas[2].selections] == [
            ("1", "active"),
            ("2", "active"),
        ]
        assert [(s.selection_id, s.price, s.status, s.dead_heat) for s in book.selections] == [
            ("1", Decimal("1.12"), "winner", Decimal("0.5")),  # prices survive the story
            ("2", Decimal("1.92"), "winner", Decimal("0.5")),
        ]

        voided, deltas = await deltas_of(stack.store, "sr:match:123/47/score=41.5")
        assert transitions(deltas) == [(2, "suspended", "bet_stop"), (3, "voided", "cancelled")]
        assert {s.status for s in voided.selections} == {"void"}

        back, deltas = await deltas_of(stack.store, "sr:match:4444/48/score=41.5")
        assert transitions(deltas) == [(2, "voided", "cancelled"), (3, "suspended", "rollback")]
        assert [(s.selection_id, s.price, s.status) for s in back.selections] == [
            ("1", Decimal("1.5"), "active"),
            ("2", Decimal("2.5"), "active"),
        ]


async def test_feed_specs_open_real_sources() -> None:
    """What ``oddstream dev --feed betfair:PATH`` and ``--feed uof:DIR`` open."""
    betfair = open_source(
        f"betfair:{data_file(BETFAIR / RECORDINGS[0])}", seed=0, events=1, rate=1, speed=0
    )
    first = [m async for m in betfair][:2]
    assert [type(m).__name__ for m in first] == ["FeedEvent", "FeedMarket"]
    uof_feed = open_source(f"uof:{UOF}", seed=0, events=1, rate=1, speed=0)
    assert len([m async for m in uof_feed]) > 10
