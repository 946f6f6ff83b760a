"""The sans-I/O market book: feed messages in, sequenced snapshots and minimal deltas out."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import protocol
from feeds.book import Books, FeedRejected, MarketBook, Output
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    FeedSelection,
    decode_feed,
    encode_feed,
)
from protocol import (
    UNSET,
    Clock,
    Delta,
    EventState,
    MarketStatus,
    Selection,
    SelectionChange,
    SelectionStatus,
    Snapshot,
)
from protocol.types import LADDER_DEPTH, SELECTION_FIELDS

EVENT = "fb-0001"
MARKET = "fb-0001:1x2"
EPOCH = f"{MARKET}@1"
TS = 1_767_366_000_000

SELECTIONS = (
    FeedSelection("home", "Arsenal", Decimal("2.10")),
    FeedSelection("draw", "Draw", Decimal("3.40")),
    FeedSelection("away", "Chelsea", Decimal("3.60")),
)


def new_epoch(market_id: str) -> str:
    return f"{market_id}@1"


def definition(ts: int = TS, **overrides: Any) -> FeedMarket:
    fields: dict[str, Any] = {
        "event_id": EVENT,
        "market_id": MARKET,
        "ts": ts,
        "sport": "football",
        "market_kind": "1x2",
        "name": "Match result",
        "selections": SELECTIONS,
        "main": True,
    }
    fields.update(overrides)
    return FeedMarket(**fields)


def status(value: MarketStatus, reason: str | None = None, ts: int = TS) -> FeedMarketStatus:
    return FeedMarketStatus(EVENT, MARKET, ts, value, reason)


def odds(*prices: FeedPrice, ts: int = TS) -> FeedOdds:
    return FeedOdds(EVENT, MARKET, ts, prices)


def d(value: str) -> Decimal:
    return Decimal(value)


def price(selection_id: str, value: str | None, **kw: Any) -> FeedPrice:
    return FeedPrice(selection_id, None if value is None else Decimal(value), **kw)


def result(*results: tuple[str, Any], ts: int = TS, **kw: Any) -> FeedResult:
    return FeedResult(EVENT, MARKET, ts, results, **kw)


def fixture(event_id: str = EVENT, ts: int = TS, **overrides: Any) -> FeedEvent:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "ts": ts,
        "sport": "football",
        "competition": "Premier League",
        "home": "Arsenal",
        "away": "Chelsea",
        "start_time": TS + 3_600_000,
    }
    fields.update(overrides)
    return FeedEvent(**fields)


def books_after(*messages: FeedMessage) -> Books:
    """Books holding MARKET (created from ``definition()``) after ``messages``."""
    books = Books(new_epoch)
    books.apply(definition(ts=TS - 1))
    for message in messages:
        books.apply(message)
    return books


def book(books: Books) -> Snapshot:
    return books.markets[MARKET].snapshot


def step(books: Books, message: FeedMessage) -> tuple[Snapshot, Output | None, Snapshot]:
    """Apply one message; return the book before, the output and the book after."""
    before = book(books)
    out = books.apply(message)
    return before, out, book(books)


# ---------------------------------------------------------------------------
# Creation and restore
# ---------------------------------------------------------------------------


def test_create_is_a_seq_1_snapshot() -> None:
    epochs: list[str] = []

    def mint(market_id: str) -> str:
        epochs.append(market_id)
        return "p1-0001"

    books = Books(mint)
    out = books.apply(definition(reason=None))
    assert out == Snapshot(
        market_id=MARKET,
        event_id=EVENT,
        seq=1,
        epoch="p1-0001",
        ts=TS,
        sport="football",
        kind="1x2",
        name="Match result",
        status="open",
        selections=(
            Selection("home", "Arsenal", Decimal("2.10")),
            Selection("draw", "Draw", Decimal("3.40")),
            Selection("away", "Chelsea", Decimal("3.60")),
        ),
        main=True,
        crc=protocol.checksum(out),
    )
    assert book(books) is out
    assert epochs == [MARKET]


def test_the_checksum_survives_a_refused_message_and_a_restore_without_one() -> None:
    """The book keeps each selection's checksum line: a price message refused after its
    first selection was read must leave them as they were, and a book restored from a
    snapshot stored without ``crc`` builds them afresh."""
    books = books_after(odds(price("home", "2.20")))
    with pytest.raises(FeedRejected):
        books.apply(odds(price("home", "2.40"), price("nobody", "3.00")))
    out = books.apply(odds(price("draw", "3.50")))
    assert isinstance(out, Delta)
    assert out.crc == protocol.checksum(book(books)) == book(books).crc
    restored = Books(new_epoch)
    restored.restore([msgspec.structs.replace(book(books), crc=None)])
    out = restored.apply(odds(price("away", "3.70")))
    assert isinstance(out, Delta)
    assert out.crc == protocol.checksum(book(restored))


def test_create_keeps_the_initial_status_and_reason() -> None:
    out = Books(new_epoch).apply(definition(status="suspended", reason="var", main=False))
    assert isinstance(out, Snapshot)
    assert (out.seq, out.status, out.reason, out.main) == (1, "suspended", "var", False)


def test_restore_continues_the_sequence_and_drops_reset() -> None:
    saved = protocol.as_reset(msgspec.structs.replace(book(books_after()), seq=41, epoch="old"))
    books = Books(new_epoch)
    books.restore(
        [saved], [EventState(EVENT, 6, TS, "football", "PL", "A v B", "A", "B", 0, "pre")]
    )
    assert book(books).reset is False
    out = books.apply(status("suspended", "goal"))
    assert isinstance(out, Delta)
    assert (out.seq, out.epoch) == (42, "old")
    event_out = books.apply(fixture(phase="live"))
    assert isinstance(event_out, EventState)
    assert event_out.seq == 7


# ---------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------


def sc(selection_id: str, **fields: Any) -> SelectionChange:
    return SelectionChange(selection_id, **fields)


TRANSITIONS: list[Any] = [
    pytest.param(
        [], status("suspended", "goal"), {"status": "suspended", "reason": "goal"}, id="suspend"
    ),
    pytest.param(
        [status("suspended", "goal")],
        status("open"),
        {"status": "open", "reason": None},
        id="reopen-clears-reason",
    ),
    pytest.param(
        [status("suspended", "goal")],
        status("open", "var"),
        {"status": "open", "reason": None},
        id="reopen-drops-any-reason",
    ),
    pytest.param(
        [status("suspended", "goal")],
        status("suspended", "var"),
        {"reason": "var"},
        id="suspension-reason-changes",
    ),
    pytest.param([], status("closed"), {"status": "closed"}, id="close"),
    pytest.param(
        [status("closed")],
        status("closed", "full time"),
        {"reason": "full time"},
        id="closed-reason-may-change",
    ),
    pytest.param(
        [odds(price("away", None, status="removed"))],
        result(("home", "winner")),
        {
            "status": "settled",
            "selections": (sc("home", status="winner"), sc("draw", status="loser")),
        },
        id="settle-unnamed-lose-removed-stay-removed",
    ),
    pytest.param(
        [status("closed")],
        result(("home", "winner"), ("draw", "void"), reason="dead heat"),
        {
            "status": "settled",
            "reason": "dead heat",
            "selections": (
                sc("home", status="winner"),
                sc("draw", status="void"),
                sc("away", status="loser"),
            ),
        },
        id="settle-after-close-with-reason",
    ),
    pytest.param(
        [status("suspended", "var")],
        result(),
        {
            "status": "settled",
            "reason": None,
            "selections": (
                sc("home", status="loser"),
                sc("draw", status="loser"),
                sc("away", status="loser"),
            ),
        },
        id="settle-without-winner",
    ),
    pytest.param(
        [],
        result(void=True, reason="abandoned"),
        {
            "status": "voided",
            "reason": "abandoned",
            "selections": (
                sc("home", status="void"),
                sc("draw", status="void"),
                sc("away", status="void"),
            ),
        },
        id="void",
    ),
    pytest.param(
        [odds(price("draw", None, status="removed"))],
        result(("home", "winner"), void=True),
        {"status": "voided", "selections": (sc("home", status="void"), sc("away", status="void"))},
        id="void-ignores-results-removed-stay-removed",
    ),
    pytest.param(
        [],
        odds(price("away", None, status="removed")),
        {"selections": (sc("away", price=None, status="removed"),)},
        id="selection-removed-via-odds",
    ),
    pytest.param(
        [odds(price("away", None, status="removed"))],
        odds(price("away", "4.00", status="active")),
        {"selections": (sc("away", price=Decimal("4.00"), status="active"),)},
        id="selection-reinstated",
    ),
    pytest.param(
        [],
        odds(price("home", "2.05"), price("draw", "3.40"), price("away", "3.60")),
        {"selections": (sc("home", price=Decimal("2.05")),)},
        id="price-change-is-minimal",
    ),
    pytest.param(
        [],
        odds(price("draw", "3.25"), price("home", "2.20")),
        {"selections": (sc("draw", price=Decimal("3.25")), sc("home", price=Decimal("2.20")))},
        id="two-prices-in-feed-order",
    ),
    pytest.param(
        [],
        odds(price("home", None)),
        {"selections": (sc("home", price=None),)},
        id="price-withdrawn",
    ),
    pytest.param(
        [status("suspended", "goal")],
        odds(price("home", "1.80")),
        {"selections": (sc("home", price=Decimal("1.80")),)},
        id="prices-move-while-suspended-reason-kept",
    ),
    pytest.param(
        [],
        definition(selections=(*SELECTIONS, FeedSelection("other", "Any other", Decimal("26")))),
        {"selections": (sc("other", name="Any other", price=Decimal("26"), status="active"),)},
        id="definition-adds-selection",
    ),
    pytest.param(
        [],
        definition(selections=(FeedSelection("home", "Arsenal FC", Decimal("2.10")),)),
        {"selections": (sc("home", name="Arsenal FC"),)},
        id="definition-renames-selection-unlisted-kept",
    ),
    pytest.param(
        [],
        definition(status="suspended", reason="var"),
        {"status": "suspended", "reason": "var"},
        id="definition-changes-status",
    ),
    pytest.param(
        [status("suspended", "goal")],
        definition(),
        {"status": "open", "reason": None},
        id="definition-reopens",
    ),
    # Exchange market data: FeedPrice fields update only when present.
    pytest.param(
        [],
        odds(
            price(
                "home",
                "2.10",
                back=((d("2.10"), d("120")), (d("2.08"), d("40.5"))),
                lay=((d("2.12"), d("80")),),
                ltp=d("2.1"),
                volume=d("15000.25"),
            )
        ),
        {
            "selections": (
                sc(
                    "home",
                    back=((d("2.10"), d("120")), (d("2.08"), d("40.5"))),
                    lay=((d("2.12"), d("80")),),
                    ltp=d("2.1"),
                    volume=d("15000.25"),
                ),
            )
        },
        id="market-data-arrives",
    ),
    pytest.param(
        [odds(price("home", "2.10", back=((d("2.10"), d("5")),), ltp=d("2.1")))],
        odds(price("home", None, back=())),
        {"selections": (sc("home", price=None, back=()),)},
        id="absent-market-data-unchanged-empty-ladder-replaces",
    ),
    pytest.param(
        [odds(price("home", "2.10", ltp=d("2.1")))],
        odds(price("home", "2.10", ltp=None)),
        {"selections": (sc("home", ltp=None),)},
        id="null-clears-market-data",
    ),
    pytest.param(
        [],
        odds(price("away", None, status="removed", adjustment=d("22.5"), removed_at=TS - 5)),
        {
            "selections": (
                sc("away", price=None, status="removed", adjustment=d("22.5"), removed_at=TS - 5),
            )
        },
        id="removed-with-adjustment-factor",
    ),
    pytest.param(
        [],
        FeedOdds(EVENT, MARKET, TS, (), volume=d("99.5")),
        {"volume": d("99.5")},
        id="market-volume",
    ),
    pytest.param(
        [odds(price("home", "2.10", ltp=d("2.1")))],
        definition(
            volume=d("7"),
            selections=(FeedSelection("home", "Arsenal", d("2.10"), bsp=d("2.2")),),
        ),
        {"volume": d("7"), "selections": (sc("home", ltp=None, bsp=d("2.2")),)},
        id="definition-replaces-market-data",
    ),
    pytest.param(
        [],
        definition(
            selections=(
                *SELECTIONS,
                FeedSelection("other", "Other", d("9"), ltp=d("8.8"), lay=((d("9.2"), d("3")),)),
            )
        ),
        {
            "selections": (
                sc(
                    "other",
                    name="Other",
                    price=d("9"),
                    status="active",
                    lay=((d("9.2"), d("3")),),
                    ltp=d("8.8"),
                ),
            )
        },
        id="new-selection-with-market-data",
    ),
    # Results with factors, and rollbacks.
    pytest.param(
        [],
        result(
            ("home", "winner"),
            ("draw", "winner"),
            ("away", "loser"),
            dead_heat=(("home", d("0.5")), ("draw", d("0.5"))),
            void_factors=(("away", d("0.25")),),
        ),
        {
            "status": "settled",
            "selections": (
                sc("home", status="winner", dead_heat=d("0.5")),
                sc("draw", status="winner", dead_heat=d("0.5")),
                sc("away", status="loser", void_factor=d("0.25")),
            ),
        },
        id="settle-with-dead-heat-and-void-factors",
    ),
    pytest.param(
        [
            status("closed"),
            result(("home", "winner"), dead_heat=(("home", d("0.5")),)),
        ],
        result(rollback=True),
        {
            "status": "suspended",
            "reason": "rollback",
            "selections": (
                sc("home", status="active", dead_heat=None),
                sc("draw", status="active"),
                sc("away", status="active"),
            ),
        },
        id="rollback-settlement-keeps-prices",
    ),
    pytest.param(
        [odds(price("draw", None, status="removed")), result(void=True, reason="cancelled")],
        result(rollback=True, reason="rollback"),
        {
            "status": "suspended",
            "reason": "rollback",
            "selections": (sc("home", status="active"), sc("away", status="active")),
        },
        id="rollback-void-removed-stay-removed",
    ),
    pytest.param(
        [result(("home", "winner")), result(rollback=True)],
        result(("away", "winner")),
        {
            "status": "settled",
            "reason": None,
            "selections": (
                sc("home", status="loser"),
                sc("draw", status="loser"),
                sc("away", status="winner"),
            ),
        },
        id="resettle-after-rollback",
    ),
    pytest.param(
        [result(("home", "winner")), result(rollback=True)],
        odds(price("home", "1.50")),
        {"selections": (sc("home", price=d("1.50")),)},
        id="prices-move-after-rollback",
    ),
]


@pytest.mark.parametrize(("before", "message", "expected"), TRANSITIONS)
def test_transition(
    before: list[FeedMessage], message: FeedMessage, expected: dict[str, Any]
) -> None:
    books = books_after(*before)
    previous, out, after = step(books, message)
    assert out == Delta(
        market_id=MARKET,
        event_id=EVENT,
        seq=previous.seq + 1,
        epoch=EPOCH,
        ts=message.ts,
        crc=protocol.checksum(after),
        **expected,
    )
    assert isinstance(out, Delta)
    assert protocol.apply(previous, out) == after
    assert after.seq == previous.seq + 1
    assert after.ts == message.ts


def test_settlement_names_each_selection_result() -> None:
    books = books_after(odds(price("away", None, status="removed")), result(("home", "winner")))
    assert [(s.selection_id, s.status) for s in book(books).selections] == [
        ("home", "winner"),
        ("draw", "loser"),
        ("away", "removed"),
    ]
    assert book(books).status == "settled"


NO_OPS: list[Any] = [
    pytest.param([], definition(ts=TS + 5), id="same-definition"),
    pytest.param([], definition(selections=()), id="definition-listing-nothing"),
    pytest.param([], status("open"), id="same-status"),
    pytest.param([], status("open", "ignored"), id="open-with-reason-while-open"),
    pytest.param([status("suspended", "goal")], status("suspended", "goal"), id="same-suspension"),
    pytest.param([], odds(price("home", "2.10"), price("draw", "3.4")), id="same-prices"),
    pytest.param([], odds(price("home", "2.10", status="active")), id="same-price-and-status"),
    pytest.param([], odds(), id="empty-odds"),
    pytest.param([status("closed")], status("closed"), id="closed-again"),
]


@pytest.mark.parametrize(("before", "message"), NO_OPS)
def test_no_op_produces_nothing_and_consumes_no_seq(
    before: list[FeedMessage], message: FeedMessage
) -> None:
    books = books_after(*before)
    previous, out, after = step(books, message)
    assert out is None
    assert after is previous
    # A status change that is valid in any non-final state, to show the seq is unused.
    follow_up = books.apply(status("suspended" if after.status == "open" else after.status, "n"))
    assert isinstance(follow_up, Delta)
    assert follow_up.seq == previous.seq + 1


REJECTIONS: list[Any] = [
    pytest.param(
        [],
        FeedOdds(EVENT, "fb-0001:ou25", TS, (price("over", "1.90"),)),
        "unknown_market",
        id="odds-unknown-market",
    ),
    pytest.param(
        [],
        FeedMarketStatus(EVENT, "fb-0001:ou25", TS, "suspended"),
        "unknown_market",
        id="status-unknown-market",
    ),
    pytest.param(
        [],
        FeedResult(EVENT, "fb-0001:ou25", TS, (("over", "winner"),)),
        "unknown_market",
        id="result-unknown-market",
    ),
    pytest.param(
        [],
        odds(price("home", "2.00"), price("over", "1.90")),
        "unknown_selection",
        id="odds-unknown-selection-nothing-applied",
    ),
    pytest.param(
        [],
        result(("home", "winner"), ("over", "loser")),
        "unknown_selection",
        id="result-unknown-selection",
    ),
    pytest.param(
        [result(("home", "winner"))],
        odds(price("home", "2.00")),
        "market_final",
        id="odds-after-settled",
    ),
    pytest.param(
        [result(("home", "winner"))], status("open"), "market_final", id="reopen-after-settled"
    ),
    pytest.param(
        [result(("home", "winner"))],
        status("settled"),
        "market_final",
        id="unchanged-status-after-settled",
    ),
    pytest.param(
        [result(("home", "winner"))], result(("away", "winner")), "market_final", id="resettle"
    ),
    pytest.param(
        [result(("home", "winner"))], definition(), "market_final", id="definition-after-settled"
    ),
    pytest.param(
        [result(void=True)], result(("home", "winner")), "market_final", id="settle-after-voided"
    ),
    pytest.param(
        [result(void=True)], odds(price("home", "2.00")), "market_final", id="odds-after-voided"
    ),
    pytest.param(
        [status("closed")], odds(price("home", "2.00")), "market_closed", id="prices-after-closed"
    ),
    pytest.param(
        [status("closed")],
        odds(price("home", "2.10")),
        "market_closed",
        id="even-unchanged-prices-after-closed",
    ),
    pytest.param([status("closed")], status("open"), "market_closed", id="reopen-after-closed"),
    pytest.param(
        [status("closed")], status("suspended", "var"), "market_closed", id="suspend-after-closed"
    ),
    pytest.param(
        [status("closed")], definition(), "market_closed", id="definition-reopening-closed"
    ),
    pytest.param(
        [], definition(event_id="fb-0002"), "event_mismatch", id="definition-event-mismatch"
    ),
    pytest.param(
        [],
        FeedMarketStatus("fb-0002", MARKET, TS, "suspended"),
        "event_mismatch",
        id="status-event-mismatch",
    ),
    pytest.param(
        [],
        FeedOdds("fb-0002", MARKET, TS, (price("home", "2.00"),)),
        "event_mismatch",
        id="odds-event-mismatch",
    ),
    pytest.param(
        [],
        FeedResult("fb-0002", MARKET, TS, (("home", "winner"),)),
        "event_mismatch",
        id="result-event-mismatch",
    ),
    pytest.param(
        [result(("home", "winner"))],
        FeedOdds("fb-0002", MARKET, TS, ()),
        "event_mismatch",
        id="event-mismatch-checked-first",
    ),
    pytest.param([], result(rollback=True), "invalid_transition", id="rollback-open-market"),
    pytest.param(
        [status("closed")], result(rollback=True), "invalid_transition", id="rollback-closed"
    ),
    pytest.param(
        [result(("home", "winner"))],
        result(("home", "winner"), rollback=True),
        "invalid_transition",
        id="rollback-naming-results",
    ),
    pytest.param(
        [result(("home", "winner")), result(rollback=True)],
        result(rollback=True),
        "invalid_transition",
        id="rollback-twice",
    ),
    pytest.param(
        [],
        result(("home", "winner"), dead_heat=(("draw", d("0.5")),)),
        "invalid_transition",
        id="dead-heat-for-an-unnamed-selection",
    ),
    pytest.param(
        [],
        result(("home", "loser"), dead_heat=(("home", d("0.5")),)),
        "invalid_transition",
        id="dead-heat-for-a-loser",
    ),
    pytest.param(
        [],
        result(("home", "winner"), void=True, void_factors=(("home", d("0.5")),)),
        "invalid_transition",
        id="factors-on-a-void",
    ),
    pytest.param(
        [],
        result(("home", "winner"), dead_heat=(("home", d("1.5")),)),
        "invalid_value",
        id="dead-heat-over-one",
    ),
    pytest.param(
        [],
        result(("home", "winner"), void_factors=(("home", d("0")),)),
        "invalid_value",
        id="void-factor-zero",
    ),
    pytest.param(
        [], odds(price("home", "2", back=((d("1.00"), d("5")),))), "invalid_price", id="back-1.00"
    ),
    pytest.param(
        [], odds(price("home", "2", lay=((d("2.5"), d("0")),))), "invalid_value", id="size-0"
    ),
    pytest.param(
        [],
        odds(price("home", "2", back=((d("2"), d("1")),) * 4)),
        "invalid_value",
        id="too-many-levels",
    ),
    pytest.param([], odds(price("home", "2", ltp=d("1"))), "invalid_price", id="ltp-1"),
    pytest.param([], odds(price("home", "2", bsp=d("NaN"))), "invalid_price", id="bsp-nan"),
    pytest.param([], odds(price("home", "2", volume=d("-1"))), "invalid_value", id="volume-neg"),
    pytest.param(
        [], FeedOdds(EVENT, MARKET, TS, (), volume=d("-1")), "invalid_value", id="market-volume"
    ),
    pytest.param(
        [],
        odds(price("home", "2", adjustment=d("100.01"))),
        "invalid_value",
        id="adjustment-over-100",
    ),
    pytest.param(
        [],
        definition(selections=(FeedSelection("home", "A", d("2"), ltp=d("0.9")),)),
        "invalid_price",
        id="definition-bad-ltp",
    ),
    pytest.param(
        [], definition(volume=d("-3")), "invalid_value", id="definition-bad-market-volume"
    ),
]


@pytest.mark.parametrize(("before", "message", "reason"), REJECTIONS)
def test_rejection_leaves_the_books_unchanged(
    before: list[FeedMessage], message: FeedMessage, reason: str
) -> None:
    books = books_after(*before)
    markets = dict(books.markets)
    snapshots = {market_id: b.snapshot for market_id, b in books.markets.items()}
    with pytest.raises(FeedRejected) as caught:
        books.apply(message)
    assert caught.value.reason == reason
    assert caught.value.message == str(caught.value)
    assert books.markets == markets
    assert {m: b.snapshot for m, b in books.markets.items()} == snapshots
    for market_id, snapshot in snapshots.items():
        assert books.markets[market_id].snapshot is snapshot


def test_rejection_consumes_no_seq() -> None:
    books = books_after()
    with pytest.raises(FeedRejected):
        books.apply(odds(price("home", "2.00"), price("nope", "9")))
    out = books.apply(odds(price("home", "2.00")))
    assert isinstance(out, Delta)
    assert out.seq == 2


def test_market_book_alone() -> None:
    market = MarketBook.create(definition(), "e")
    assert market.snapshot.seq == 1
    out = market.apply(status("suspended", "goal"))
    assert isinstance(out, Delta)
    assert market.snapshot.status == "suspended"


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_event_state_seq_increments_only_on_real_change() -> None:
    books = Books(new_epoch)
    first = books.apply(fixture())
    assert first == EventState(
        event_id=EVENT,
        seq=1,
        ts=TS,
        sport="football",
        competition="Premier League",
        name="Arsenal v Chelsea",
        home="Arsenal",
        away="Chelsea",
        start_time=TS + 3_600_000,
        phase="pre",
    )
    assert books.apply(fixture(ts=TS + 10)) is None  # only the timestamp moved
    assert books.events[EVENT] is first
    steps: list[tuple[dict[str, Any], int | None]] = [
        ({"phase": "live"}, 2),
        ({"phase": "live"}, None),
        ({"phase": "live", "clock": Clock("1H", 60, running=True)}, 3),
        ({"phase": "live", "clock": Clock("1H", 60, running=True)}, None),
        ({"phase": "live", "clock": Clock("1H", 60, running=True), "score": (1, 0)}, 4),
        ({"phase": "ended", "score": (1, 0)}, 5),
        ({"phase": "ended", "score": (1, 0)}, None),
    ]
    for ts, (fields, expected_seq) in enumerate(steps, start=TS + 100):
        out = books.apply(fixture(ts=ts, **fields))
        if expected_seq is None:
            assert out is None, fields
        else:
            assert isinstance(out, EventState)
            assert (out.seq, out.ts) == (expected_seq, ts)
            assert books.events[EVENT] is out
    assert books.events[EVENT].seq == 5


def test_an_event_without_an_away_side_is_named_by_its_home() -> None:
    """A race meeting (one name, no opponents) is named as it is, not "Warwick v "."""
    out = Books(new_epoch).apply(fixture(home="Warwick", away="", sport="horse_racing"))
    assert isinstance(out, EventState)
    assert (out.name, out.home, out.away) == ("Warwick", "Warwick", "")


def test_events_are_sequenced_independently() -> None:
    books = Books(new_epoch)
    outs = [books.apply(fixture(e, phase=p)) for e in ("a", "b") for p in ("pre", "live")]
    assert [(o.event_id, o.seq) for o in outs if isinstance(o, EventState)] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    ]


# ---------------------------------------------------------------------------
# Defects found by review, fixed in feeds/book.py; these keep them fixed.
# ---------------------------------------------------------------------------


def ingest(books: Books, raw: bytes) -> Literal["applied", "dead-letter"]:
    """What a book processor does with one feed record: decode, apply, or dead-letter."""
    try:
        books.apply(decode_feed(raw))
    except (msgspec.DecodeError, FeedRejected):
        return "dead-letter"
    return "applied"


def _raw_odds(value: str) -> bytes:
    return (
        b'{"kind":"odds","event_id":"fb-0001","market_id":"fb-0001:1x2","ts":1,'
        b'"prices":[{"selection_id":"home","price":"%s"}]}' % value.encode()
    )


def test_closed_market_prices_are_frozen_against_definitions_too() -> None:
    books = books_after(status("closed"))
    with pytest.raises(FeedRejected) as caught:
        books.apply(
            definition(
                status="closed",
                selections=(FeedSelection("home", "Arsenal", Decimal("9.90")),),
            )
        )
    assert caught.value.reason == "market_closed"


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([status("settled"), result(("home", "winner"))], id="status-settled"),
        pytest.param([status("voided"), result(void=True)], id="status-voided"),
        pytest.param(
            [definition(status="settled"), result(("home", "winner"))], id="definition-settled"
        ),
    ],
)
def test_a_final_market_has_no_active_selection(messages: list[FeedMessage]) -> None:
    books = books_after()
    for message in messages:
        try:
            books.apply(message)
        except FeedRejected:
            continue
    final = book(books)
    assert final.status in {"settled", "voided"}
    assert all(s.status != "active" for s in final.selections)


def test_definition_changes_name_and_main() -> None:
    books = books_after()
    books.apply(definition(name="Full-time result", main=False))
    assert (book(books).name, book(books).main) == ("Full-time result", False)


@pytest.mark.parametrize("value", ["sNaN", "NaN", "Infinity"])
def test_non_finite_price_is_dead_lettered(value: str) -> None:
    books = books_after()
    assert ingest(books, _raw_odds(value)) == "dead-letter"
    assert ingest(books, _raw_odds("2.00")) == "applied"


def test_poisoned_definition_does_not_wedge_the_market() -> None:
    books = Books(new_epoch)
    raw_definition = (
        b'{"kind":"market","event_id":"fb-0001","market_id":"fb-0001:1x2","ts":1,'
        b'"sport":"football","market_kind":"1x2","name":"Match result",'
        b'"selections":[{"selection_id":"home","name":"Arsenal","price":"sNaN"}]}'
    )
    outcomes = {ingest(books, raw_definition), ingest(books, _raw_odds("2.00"))}
    assert outcomes <= {"applied", "dead-letter"}


def test_a_result_cannot_leave_a_selection_active() -> None:
    books = books_after()
    with pytest.raises(FeedRejected) as caught:
        books.apply(result(("home", "active")))
    assert caught.value.reason == "invalid_transition"
    assert book(books).status == "open"


def test_duplicate_selection_ids_are_refused() -> None:
    books = Books(new_epoch)
    twice = (FeedSelection("home", "Arsenal", Decimal("2")), FeedSelection("home", "Arsenal"))
    with pytest.raises(FeedRejected):
        books.apply(definition(selections=twice))


# ---------------------------------------------------------------------------
# Property: random feeds keep every market's sequence whole and rebuildable
# ---------------------------------------------------------------------------

MARKETS = {"fb-0001:1x2": "fb-0001", "fb-0001:ou25": "fb-0001", "fb-0002:1x2": "fb-0002"}
EVENTS = ("fb-0001", "fb-0002")
SELECTION_IDS = ("home", "draw", "away", "over")
LADDER = tuple(Decimal(p) for p in ("1.01", "1.5", "2.1", "2.10", "3.40", "1000"))

_prices = st.none() | st.sampled_from(LADDER)
_reasons = st.sampled_from([None, "goal", "var"])
# Weighted towards the live states, so that markets live long enough to build up deltas.
_LIVE: list[MarketStatus] = ["open", "suspended"]
_ENDS: list[MarketStatus] = ["closed", "settled", "voided"]
_market_statuses = st.sampled_from(_LIVE * 8 + _ENDS)
_opening_statuses = st.sampled_from(_LIVE)
_RESULTS: list[SelectionStatus] = ["winner", "loser", "void"]
_ACTIVE: list[SelectionStatus] = ["active"]
_selection_statuses = st.sampled_from([*_ACTIVE * 4, "removed", *_RESULTS])
_timestamps = st.integers(0, 2**42)
# A market and, mostly, its own event (sometimes the other one, for event_mismatch).
_ids = st.sampled_from(
    [(m, e) for m, e in MARKETS.items() for _ in range(14)]
    + [(m, e) for m in MARKETS for e in EVENTS if e != MARKETS[m]]
)
# Optional market data (valid; ``bad_market_data`` below makes the values the book refuses).
_sizes = st.sampled_from([Decimal(v) for v in ("2", "10.50", "250")])
_levels = st.lists(st.tuples(st.sampled_from(LADDER), _sizes), max_size=LADDER_DEPTH).map(tuple)
_traded = st.none() | st.sampled_from(LADDER)
_volumes = st.none() | st.sampled_from([Decimal(v) for v in ("0", "12.5", "9000")])
_adjustments = st.none() | st.sampled_from([Decimal(v) for v in ("0", "22.12", "7.5")])
_removed_at = st.none() | st.integers(0, 2**42)
_BAD_MARKET_DATA: list[dict[str, Any]] = [
    {"back": ((Decimal("1.00"), Decimal("5")),)},
    {"lay": ((Decimal("2.10"), Decimal("0")),)},
    {"back": ((Decimal("2.10"), Decimal("5")),) * (LADDER_DEPTH + 1)},
    {"ltp": Decimal("0.5")},
    {"bsp": Decimal("Infinity")},
    {"volume": Decimal("-1")},
    {"adjustment": Decimal("100.5")},
]


def _or_unset(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly absent (an update that leaves the field alone), sometimes a value."""
    return st.one_of(st.just(UNSET), st.just(UNSET), values)


_plain_selections = st.builds(
    FeedSelection,
    st.sampled_from(SELECTION_IDS),
    st.sampled_from(["Arsenal", "Draw", "Chelsea", "Over 2.5"]),
    _prices,
    _selection_statuses,
)
_exchange_selections = st.builds(
    FeedSelection,
    st.sampled_from(SELECTION_IDS),
    st.sampled_from(["Arsenal", "Draw", "Chelsea", "Over 2.5"]),
    _prices,
    _selection_statuses,
    back=_levels,
    lay=_levels,
    ltp=_traded,
    volume=_volumes,
    bsp=_traded,
    adjustment=_adjustments,
    removed_at=_removed_at,
)
# Half the selections carry exchange market data (generating it all the time is slow).
_selections = st.one_of(_plain_selections, _exchange_selections)


def _named(selection_id: str) -> Any:
    return lambda s: msgspec.structs.replace(s, selection_id=selection_id)


_plain_prices = st.builds(
    FeedPrice,
    st.sampled_from(SELECTION_IDS[:3] * 5 + SELECTION_IDS[3:]),  # "over" is mostly unknown
    _prices,
    st.none() | _selection_statuses,
)
_exchange_prices = st.builds(
    FeedPrice,
    st.sampled_from(SELECTION_IDS[:3] * 5 + SELECTION_IDS[3:]),
    _prices,
    st.none() | _selection_statuses,
    back=_or_unset(_levels),
    lay=_or_unset(_levels),
    ltp=_or_unset(_traded),
    volume=_or_unset(_volumes),
    bsp=_or_unset(_traded),
    adjustment=_or_unset(_adjustments),
    removed_at=_or_unset(_removed_at),
)
_feed_prices = st.one_of(_plain_prices, _exchange_prices)
_named_results = st.tuples(st.sampled_from(SELECTION_IDS), st.sampled_from(_RESULTS))
_factors = st.sampled_from([Decimal(v) for v in ("0.5", "0.25", "1", "0.5", "0")])


@st.composite
def definitions(draw: st.DrawFn, opening: str | None = None) -> FeedMarket:
    """A market definition; with ``opening``, the first one of that market (live, with
    at least three selections)."""
    if opening is None:
        market_id, event_id = draw(_ids)
    else:
        market_id, event_id = opening, MARKETS[opening]
    # Distinct ids first, then a selection for each: no draws thrown away as duplicates.
    ids = draw(st.lists(st.sampled_from(SELECTION_IDS), unique=True, min_size=3 if opening else 0))
    selections = st.tuples(*(_selections.map(_named(i)) for i in ids))
    return FeedMarket(
        event_id,
        market_id,
        draw(_timestamps),
        "football",
        "1x2",
        "Match result",
        draw(selections),
        draw(_market_statuses if opening is None else _opening_statuses),
        draw(st.booleans()),
        draw(_reasons),
        draw(_volumes),
    )


@st.composite
def statuses(draw: st.DrawFn) -> FeedMarketStatus:
    market_id, event_id = draw(_ids)
    value = draw(_market_statuses)
    return FeedMarketStatus(event_id, market_id, draw(_timestamps), value, draw(_reasons))


@st.composite
def odds_messages(draw: st.DrawFn) -> FeedOdds:
    market_id, event_id = draw(_ids)
    prices = tuple(draw(st.lists(_feed_prices, max_size=4)))
    return FeedOdds(event_id, market_id, draw(_timestamps), prices, draw(_or_unset(_volumes)))


@st.composite
def bad_market_data(draw: st.DrawFn) -> FeedOdds | FeedMarket:
    """An update or a definition carrying one value no screen should show."""
    bad = draw(st.sampled_from(_BAD_MARKET_DATA))
    if draw(st.booleans()):
        odds = draw(odds_messages())
        price = draw(_feed_prices)
        return msgspec.structs.replace(
            odds, prices=(*odds.prices, msgspec.structs.replace(price, **bad))
        )
    market = draw(definitions())
    selection = msgspec.structs.replace(draw(_selections), selection_id="bad", **bad)
    return msgspec.structs.replace(market, selections=(*market.selections, selection))


@st.composite
def results(draw: st.DrawFn) -> FeedResult:
    """A settlement or void (with dead-heat and void factors for some of the selections
    it names, sometimes for ones it does not), or, half the time, a rollback."""
    market_id, event_id = draw(_ids)
    if draw(st.booleans()):
        return FeedResult(event_id, market_id, draw(_timestamps), rollback=True)
    named = tuple(draw(st.lists(_named_results, unique_by=lambda r: r[0], max_size=3)))
    ids = st.sampled_from([r[0] for r in named] or list(SELECTION_IDS))
    factor_lists = st.lists(st.tuples(ids, _factors), unique_by=lambda f: f[0], max_size=2)
    return FeedResult(
        event_id,
        market_id,
        draw(_timestamps),
        named,
        draw(st.booleans()),
        draw(_reasons),
        dead_heat=tuple(draw(factor_lists)) if draw(st.booleans()) else (),
        void_factors=tuple(draw(factor_lists)) if draw(st.booleans()) else (),
    )


events = st.builds(
    FeedEvent,
    event_id=st.sampled_from(EVENTS),
    ts=_timestamps,
    sport=st.just("football"),
    competition=st.just("Premier League"),
    home=st.just("Arsenal"),
    away=st.just("Chelsea"),
    start_time=st.just(TS),
    phase=st.sampled_from(["pre", "live", "ended"]),
    score=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    clock=st.none() | st.builds(Clock, st.sampled_from(["1H", "2H"]), st.integers(0, 3)),
)

# Weighted: mostly prices, as in a real feed; a settlement ends a market, so it is rare.
_KINDS = ["odds"] * 20 + ["status"] * 6 + ["market"] * 3 + ["event"] * 2 + ["result"] * 3 + ["bad"]
_BY_KIND: dict[str, st.SearchStrategy[FeedMessage]] = {
    "bad": bad_market_data(),
    "odds": odds_messages(),
    "status": statuses(),
    "market": definitions(),
    "event": events,
    "result": results(),
}


@st.composite
def feed_messages(draw: st.DrawFn) -> FeedMessage:
    return draw(_BY_KIND[draw(st.sampled_from(_KINDS))])


def assert_minimal(previous: Snapshot, delta: Delta) -> None:
    """Every field a delta carries differs from the book it applies to."""
    market_fields = (delta.status, delta.reason, delta.name, delta.main, delta.volume)
    assert market_fields != (UNSET,) * 5 or delta.selections
    assert delta.status is UNSET or delta.status != previous.status
    assert delta.reason is UNSET or delta.reason != previous.reason
    assert delta.volume is UNSET or delta.volume != previous.volume
    known = {s.selection_id: s for s in previous.selections}
    for change in delta.selections:
        old = known.get(change.selection_id)
        if old is None:
            assert change.name is not UNSET, "a new selection arrives with its name"
            continue
        carried = [f for f in SELECTION_FIELDS if getattr(change, f) is not UNSET]
        assert carried, "a change carries at least one field"
        for name in carried:
            assert getattr(change, name) != getattr(old, name), name


def assert_sane(book: Snapshot) -> None:
    """The book holds no market data a screen should not show."""
    assert book.volume is None or book.volume >= 0
    for sel in book.selections:
        for side in (sel.back, sel.lay):
            assert len(side) <= LADDER_DEPTH
            assert all(p.is_finite() and p >= Decimal("1.01") and z > 0 for p, z in side)
        for price in (sel.price, sel.ltp, sel.bsp):
            assert price is None or (price.is_finite() and price >= Decimal("1.01"))
        assert sel.volume is None or sel.volume >= 0
        assert sel.adjustment is None or 0 <= sel.adjustment <= 100
        for factor in (sel.dead_heat, sel.void_factor):
            assert factor is None or 0 < factor <= 1


def assert_wire_identity(message: Output) -> None:
    data = protocol.encode(message)
    assert protocol.decode_server(data) == message
    assert protocol.encode(protocol.decode_server(data)) == data
    assert protocol.decode_server_msgpack(protocol.encode_msgpack(message)) == message


@settings(max_examples=200, deadline=None)
@given(
    st.tuples(*(definitions(m) for m in sorted(MARKETS))),
    st.lists(feed_messages(), min_size=10, max_size=40),
)
def test_random_feeds_keep_sequences_whole_and_rebuildable(
    opening: tuple[FeedMarket, ...], messages: list[FeedMessage]
) -> None:
    """Whatever the feed says, in any order: each market's outputs are a seq-1 snapshot
    then deltas 2, 3...; the snapshot plus the deltas, applied with protocol.apply, is
    the book; every delta is minimal; a rejection or a no-op changes nothing."""
    books = Books(new_epoch)
    per_market: dict[str, list[Snapshot | Delta]] = defaultdict(list)
    per_event: dict[str, list[EventState]] = defaultdict(list)
    for message in [*opening, *messages]:
        assert decode_feed(encode_feed(message)) == message
        market_id = getattr(message, "market_id", None)
        before = (
            None
            if market_id is None or market_id not in books.markets
            else (books.markets[market_id].snapshot)
        )
        try:
            out = books.apply(message)
        except FeedRejected:
            if market_id is not None:
                current = books.markets.get(market_id)
                assert (current and current.snapshot) is before
            continue
        if out is None:
            assert market_id is None or books.markets[market_id].snapshot is before
            continue
        assert_wire_identity(out)
        if market_id is not None:
            assert_sane(books.markets[market_id].snapshot)
        if isinstance(out, EventState):
            per_event[out.event_id].append(out)
            continue
        if isinstance(out, Delta):
            assert before is not None
            assert_minimal(before, out)
            if before.status in {"settled", "voided"}:
                event("a rollback applied")
            if any(c.back is not UNSET or c.ltp is not UNSET for c in out.selections):
                event("market data changed")
        per_market[out.market_id].append(out)

    assert set(per_market) == set(books.markets)
    event(f"deltas: {sum(len(o) - 1 for o in per_market.values()) // 5 * 5}+")
    for market_id, outputs in per_market.items():
        first, rest = outputs[0], outputs[1:]
        assert isinstance(first, Snapshot)
        assert [o.seq for o in outputs] == list(range(1, len(outputs) + 1))
        assert {o.epoch for o in outputs} == {new_epoch(market_id)}
        rebuilt = first
        for delta in rest:
            assert isinstance(delta, Delta)
            rebuilt = protocol.apply(rebuilt, delta)
        assert rebuilt == books.markets[market_id].snapshot
        assert protocol.encode(rebuilt) == protocol.encode(books.markets[market_id].snapshot)
    for event_id, states in per_event.items():
        assert [s.seq for s in states] == list(range(1, len(states) + 1))
        assert states[-1] is books.events[event_id]
