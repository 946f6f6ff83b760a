"""The UOF adapter: safe parsing, odds changes, bet stops, settlements, cancels and
rollbacks, and the reader's reporting of what it cannot read."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from feeds.book import Books
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
from feeds.replay import ReadReport
from feeds.sources import READERS, check_spec
from feeds.uof import MAX_MESSAGE_BYTES, UofAdapter, UofError, parse, read_uof
from protocol import Clock
from tests.data import FEEDS

DATA = FEEDS / "uof"

EVENT = "sr:match:1"
M1X2 = f"{EVENT}/1"
TOTAL = f"{EVENT}/18/total=2.5"


def d(value: str) -> Decimal:
    return Decimal(value)


def xml(root: str, body: str = "", *, ts: int = 1000, event: str = EVENT, **attrs: str) -> bytes:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<{root} event_id="{event}" timestamp="{ts}" product="1"{extra}>{body}</{root}>'
    ).encode()


def market(mid: str, outcomes: str = "", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<market id="{mid}"{extra}>{outcomes}</market>'


def outcome(oid: str, odds: str | None = None, active: str = "1", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    odds_attr = f' odds="{odds}"' if odds is not None else ""
    return f'<outcome id="{oid}"{odds_attr} active="{active}"{extra}/>'


def odds_change(*markets: str, ts: int = 1000, status: str = "") -> bytes:
    return xml("odds_change", f"{status}<odds>{''.join(markets)}</odds>", ts=ts)


ONE_X_TWO = market("1", outcome("1", "2.10") + outcome("2", "3.40") + outcome("3", "3.60"))
TOTALS = market("18", outcome("12", "1.90") + outcome("13", "1.95"), specifiers="total=2.5")
OPENING = odds_change(ONE_X_TWO, TOTALS)


def result(oid: str, won: str, **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<outcome id="{oid}" result="{won}"{extra}/>'


def settlement(*markets: str, ts: int = 2000) -> bytes:
    return xml("bet_settlement", f"<outcomes>{''.join(markets)}</outcomes>", ts=ts, certainty="2")


SETTLE_1X2 = settlement(market("1", result("1", "1") + result("2", "0") + result("3", "0")))


def after(*messages: bytes, **kw: Any) -> UofAdapter:
    adapter = UofAdapter(**kw)
    for raw in messages:
        adapter.translate(raw)
    return adapter


def kinds(messages: list[FeedMessage]) -> list[tuple[str, str]]:
    return [(type(m).__name__, getattr(m, "market_id", m.event_id)) for m in messages]


# ---------------------------------------------------------------------------
# Parsing untrusted XML
# ---------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<odds_change event_id="sr:match:1" timestamp="1">&lol2;</odds_change>"""

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<odds_change event_id="sr:match:1" timestamp="1">&xxe;</odds_change>"""

UTF16_ENTITY = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
UTF16_ENTITY_BYTES = UTF16_ENTITY.encode("utf-16")

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE odds_change SYSTEM "http://example.invalid/uof.dtd">
<odds_change event_id="sr:match:1" timestamp="1"/>"""


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(BILLION_LAUGHS, "DOCTYPE", id="entity-expansion"),
        pytest.param(EXTERNAL, "DOCTYPE", id="external-entity"),
        pytest.param(EXTERNAL_DTD, "DOCTYPE", id="external-dtd"),
        pytest.param(b"<odds_change", "not well-formed", id="truncated"),
        pytest.param(b"", "not well-formed", id="empty"),
        pytest.param(b"not xml at all", "not well-formed", id="text"),
        pytest.param(b"<a>&undefined;</a>", "not well-formed", id="undefined-entity"),
        pytest.param(b" " * (MAX_MESSAGE_BYTES + 1), "over", id="too-big"),
        pytest.param(b'<?xml version="1.0" encoding="bogus"?><a/>', "encoding", id="encoding"),
        pytest.param(UTF16_ENTITY_BYTES, "DOCTYPE", id="entity-in-utf16"),
        pytest.param(b'<?xml version="1.0" encoding="ascii"?><a>\xff</a>', "not well", id="bytes"),
    ],
)
def test_refused_documents(raw: bytes, reason: str) -> None:
    with pytest.raises(UofError, match=reason):
        parse(raw)


def test_parse_gives_an_element_tree() -> None:
    root = parse(OPENING)
    assert root.tag == "odds_change"
    assert [m.get("id") for m in root.iter("market")] == ["1", "18"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'<fixture_changed event_id="sr:match:1" timestamp="1"/>', "unknown message"),
        (b'<odds_change timestamp="1"/>', "without event_id"),
        (b'<bet_stop event_id="sr:match:1"/>', "without a valid timestamp"),
        (b'<bet_stop event_id="sr:match:1" timestamp="soon"/>', "without a valid timestamp"),
    ],
)
def test_unreadable_messages(raw: bytes, reason: str) -> None:
    with pytest.raises(UofError, match=reason):
        UofAdapter().translate(raw)


@pytest.mark.parametrize("root", ["alive", "snapshot_complete", "fixture_change"])
def test_messages_without_odds_produce_nothing(root: str) -> None:
    adapter = UofAdapter()
    assert adapter.translate(f'<{root} product="1" timestamp="5"/>'.encode()) == ([], [])
    assert adapter.stats.silent == 1


# ---------------------------------------------------------------------------
# odds_change
# ---------------------------------------------------------------------------


def test_opening_odds_define_an_event_and_its_markets() -> None:
    out = UofAdapter(sport="football").translate(OPENING)
    assert out.problems == []
    event, first, second = out.messages
    assert event == FeedEvent(EVENT, 1000, "football", "", EVENT, "", 0)
    assert first == FeedMarket(
        event_id=EVENT,
        market_id=M1X2,
        ts=1000,
        sport="football",
        market_kind="uof_1",
        name="Market 1",
        selections=(
            FeedSelection("1", "1", d("2.10")),
            FeedSelection("2", "2", d("3.40")),
            FeedSelection("3", "3", d("3.60")),
        ),
        main=True,
    )
    assert isinstance(second, FeedMarket)
    assert (second.market_id, second.name, second.main) == (
        TOTAL,
        "Market 18 (total=2.5)",
        False,
    )


def test_specifiers_in_any_order_name_one_market() -> None:
    adapter = UofAdapter()
    a = adapter.translate(odds_change(market("9", outcome("1", "2"), specifiers="b=2|a=1")))
    b = adapter.translate(odds_change(market("9", outcome("1", "3"), specifiers="a=1|b=2")))
    assert only_market_ids(a.messages) == [f"{EVENT}/9/a=1|b=2"]
    assert only_market_ids(b.messages) == [f"{EVENT}/9/a=1|b=2"]
    assert isinstance(b.messages[-1], FeedOdds)


def only_market_ids(messages: list[FeedMessage]) -> list[str]:
    return [m.market_id for m in messages if not isinstance(m, FeedEvent)]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0", [("FeedMarketStatus", "suspended", "inactive"), ("FeedOdds",)]),
        ("-1", [("FeedMarketStatus", "suspended", "bet_stop"), ("FeedOdds",)]),
        ("-2", [("FeedMarketStatus", "suspended", "handed_over"), ("FeedOdds",)]),
        ("-3", []),
        ("-4", []),
    ],
)
def test_market_status_codes(code: str, expected: list[tuple[str, ...]]) -> None:
    adapter = after(OPENING)
    changed = market("1", outcome("1", "2.20") + outcome("2", "3.30"), status=code)
    out = adapter.translate(odds_change(changed, ts=1001))
    got = [
        (type(m).__name__, m.status, m.reason) if isinstance(m, FeedMarketStatus) else ("FeedOdds",)
        for m in out.messages
    ]
    assert got == expected


def test_reopening_sends_prices_first_suspending_sends_status_first() -> None:
    adapter = after(OPENING)
    suspend = adapter.translate(odds_change(market("1", outcome("1", "2.0"), status="-1")))
    assert [type(m).__name__ for m in suspend.messages] == ["FeedMarketStatus", "FeedOdds"]
    reopen = adapter.translate(odds_change(market("1", outcome("1", "1.9"), status="1")))
    assert [type(m).__name__ for m in reopen.messages] == ["FeedOdds", "FeedMarketStatus"]
    assert reopen.messages[0] == FeedOdds(EVENT, M1X2, 1000, (FeedPrice("1", d("1.9")),))


def test_inactive_outcomes_and_bad_odds_have_no_price() -> None:
    out = after(OPENING).translate(
        odds_change(
            market("1", outcome("1", "2.0", active="0") + outcome("2", "0.5") + outcome("3"))
        )
    )
    assert only_odds(out.messages) == {"1": None, "2": None, "3": None}
    assert out.problems == [f"{M1X2}/2: odds '0.5' is not a price; shown as none"]


def only_odds(messages: list[FeedMessage]) -> dict[str, Decimal | None]:
    (odds,) = [m for m in messages if isinstance(m, FeedOdds)]
    return {p.selection_id: p.price for p in odds.prices}


def test_a_new_outcome_redefines_the_market() -> None:
    out = after(OPENING).translate(odds_change(market("1", outcome("4", "9.0"))))
    (definition,) = out.messages
    assert isinstance(definition, FeedMarket)
    assert definition.selections == (FeedSelection("4", "4", d("9.0")),)


def test_an_inactive_market_never_seen_is_not_created() -> None:
    adapter = UofAdapter()
    out = adapter.translate(odds_change(market("49", status="0")))
    assert out == ([], [])


def test_handed_over_from_another_producer_is_ignored() -> None:
    adapter = after(OPENING)
    later = xml(
        "odds_change",
        "<odds>" + market("1", outcome("1", "2.0"), status="-2") + "</odds>",
    ).replace(b'product="1"', b'product="3"')
    assert adapter.translate(later).messages == []


def test_sport_event_status_gives_score_clock_and_phase() -> None:
    status = (
        '<sport_event_status status="1" match_status="7" home_score="2" away_score="1">'
        '<clock match_time="75:02"/></sport_event_status>'
    )
    adapter = after(OPENING)
    out = adapter.translate(odds_change(ts=1500, status=status))
    (event,) = out.messages
    assert isinstance(event, FeedEvent)
    assert (event.phase, event.score, event.clock) == ("live", (2, 1), Clock("2H", 4502, True))
    ended = adapter.translate(
        odds_change(ts=1600, status='<sport_event_status status="4" match_status="100"/>')
    )
    assert ended.messages[0].phase == "ended"  # type: ignore[union-attr]
    back = adapter.translate(odds_change(ts=1700, status='<sport_event_status status="0"/>'))
    assert back.messages == []  # Not back to "pre": nothing changed.


# ---------------------------------------------------------------------------
# bet_stop
# ---------------------------------------------------------------------------


def test_bet_stop_all_suspends_every_open_market_of_the_event() -> None:
    adapter = after(OPENING, odds_change(market("5", outcome("1", "2"), status="-1")))
    out = adapter.translate(xml("bet_stop", groups="all"))
    assert [(m.market_id, m.status, m.reason) for m in out.messages] == [  # type: ignore[union-attr]
        (M1X2, "suspended", "bet_stop"),
        (TOTAL, "suspended", "bet_stop"),
    ]
    assert adapter.translate(xml("bet_stop")).messages == []  # Already stopped.


def test_bet_stop_groups_use_the_market_groups_given() -> None:
    groups = {"1": frozenset({"all", "score"}), "18": frozenset({"all", "goals"})}
    adapter = after(OPENING, market_groups=groups)
    out = adapter.translate(xml("bet_stop", groups="goals|corners"))
    assert [m.market_id for m in out.messages] == [TOTAL]  # type: ignore[union-attr]


def test_bet_stop_groups_suspend_markets_of_unknown_groups() -> None:
    out = after(OPENING).translate(xml("bet_stop", groups="goals"))
    assert len(out.messages) == 2


def test_bet_stop_inactive_and_other_events_untouched() -> None:
    adapter = after(OPENING)
    assert adapter.translate(xml("bet_stop", event="sr:match:2")).messages == []
    out = adapter.translate(xml("bet_stop", market_status="0"))
    assert {m.reason for m in out.messages} == {"inactive"}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Settlement, cancel, rollbacks
# ---------------------------------------------------------------------------


def test_settlement_with_void_and_dead_heat_factors() -> None:
    raw = settlement(
        market(
            "1",
            result("1", "1", dead_heat_factor="0.5")
            + result("2", "1", dead_heat_factor="0.5", void_factor="0.5")
            + result("3", "0", void_factor="1"),
        )
    )
    (message,) = after(OPENING).translate(raw).messages
    assert message == FeedResult(
        EVENT,
        M1X2,
        2000,
        (("1", "winner"), ("2", "winner"), ("3", "void")),
        dead_heat=(("1", d("0.5")), ("2", d("0.5"))),
        void_factors=(("2", d("0.5")),),
    )


def test_settlement_of_a_market_never_seen_creates_it_closed() -> None:
    out = UofAdapter().translate(settlement(market("7", result("a", "1") + result("b", "0"))))
    assert kinds(out.messages) == [
        ("FeedEvent", EVENT),
        ("FeedMarket", f"{EVENT}/7"),
        ("FeedResult", f"{EVENT}/7"),
    ]
    assert out.messages[1].status == "closed"  # type: ignore[union-attr]


def test_the_same_settlement_twice_is_one_and_a_different_one_replaces_it() -> None:
    adapter = after(OPENING, SETTLE_1X2)
    assert adapter.translate(SETTLE_1X2).messages == []
    changed = settlement(market("1", result("1", "0") + result("2", "1") + result("3", "0")))
    out = adapter.translate(changed)
    assert [(type(m).__name__, getattr(m, "rollback", None)) for m in out.messages] == [
        ("FeedResult", True),
        ("FeedResult", False),
    ]


def test_settlement_naming_a_new_outcome_adds_it_first() -> None:
    raw = settlement(market("1", result("1", "0") + result("9", "1")))
    out = after(OPENING).translate(raw)
    assert [type(m).__name__ for m in out.messages] == ["FeedMarket", "FeedResult"]


@pytest.mark.parametrize(
    ("malformed", "problem"),
    [
        (market("1", result("1", "2")), "with result '2'"),
        (market("1", '<outcome result="1"/>'), "outcome None"),
        (market("1"), "settlement without outcomes"),
        ('<market><outcome id="1" result="1"/></market>', "market without an id"),
        (market("1", result("1", "1", dead_heat_factor="2")), "factor not in 0-1"),
        (market("1", result("1", "1", dead_heat_factor="0")), "factor not in 0-1"),
        (market("1", result("1", "0", void_factor="x")), "factor not in 0-1"),
    ],
)
def test_malformed_settlements_are_problems(malformed: str, problem: str) -> None:
    out = after(OPENING).translate(settlement(malformed))
    assert out.messages == []
    assert problem in out.problems[0]


def test_cancel_voids_and_a_windowed_cancel_leaves_the_market() -> None:
    adapter = after(OPENING)
    windowed = xml("bet_cancel", market("1", void_reason="12"), start_time="1", end_time="2")
    assert adapter.translate(windowed).messages == []
    assert adapter.stats.partial_cancels == 1
    (void,) = adapter.translate(xml("bet_cancel", market("1", void_reason="12"))).messages
    assert void == FeedResult(EVENT, M1X2, 1000, void=True, reason="cancelled")
    assert adapter.translate(xml("bet_cancel", market("1"))).messages == []


def test_rollbacks_undo_exactly_what_they_name() -> None:
    adapter = after(OPENING, SETTLE_1X2)
    nothing = adapter.translate(xml("rollback_bet_cancel", market("1")))
    assert nothing.messages == []
    assert "is settled, nothing to undo" in nothing.problems[0]
    (undo,) = adapter.translate(xml("rollback_bet_settlement", market("1"), ts=3000)).messages
    assert undo == FeedResult(EVENT, M1X2, 3000, rollback=True)
    adapter.translate(xml("bet_cancel", market("18", specifiers="total=2.5")))
    out = adapter.translate(xml("rollback_bet_cancel", market("18", specifiers="total=2.5")))
    assert out.messages == [FeedResult(EVENT, TOTAL, 1000, rollback=True)]
    unknown = adapter.translate(xml("rollback_bet_settlement", market("77")))
    assert "is unknown" in unknown.problems[0]


def test_a_cancel_after_a_settlement_rolls_it_back_first() -> None:
    out = after(OPENING, SETTLE_1X2).translate(xml("bet_cancel", market("1")))
    assert [(getattr(m, "rollback", None), getattr(m, "void", None)) for m in out.messages] == [
        (True, False),
        (False, True),
    ]


def test_odds_for_a_settled_market_are_problems() -> None:
    out = after(OPENING, SETTLE_1X2).translate(odds_change(market("1", outcome("1", "2"))))
    assert out.messages == []
    assert "settled: odds_change ignored" in out.problems[0]


def test_the_books_take_a_settle_rollback_resettle_cancel_story() -> None:
    adapter = UofAdapter()
    books = Books(lambda m: "e")
    story = [
        OPENING,
        xml("bet_stop"),
        SETTLE_1X2,
        xml("rollback_bet_settlement", market("1")),
        odds_change(market("1", outcome("1", "1.5"))),
        settlement(market("1", result("1", "0") + result("2", "0") + result("3", "1"))),
        xml("bet_cancel", market("1")),
        xml("rollback_bet_cancel", market("1")),
    ]
    statuses = []
    for raw in story:
        for message in adapter.translate(raw).messages:
            assert decode_feed(encode_feed(message)) == message
            books.apply(message)
        statuses.append(books.markets[M1X2].snapshot.status)
    assert statuses == [
        "open",
        "suspended",
        "settled",
        "suspended",
        "open",
        "settled",
        "voided",
        "suspended",
    ]
    book = books.markets[M1X2].snapshot
    assert book.reason == "rollback"
    assert [(s.selection_id, s.price, s.status) for s in book.selections] == [
        ("1", d("1.5"), "active"),
        ("2", d("3.40"), "active"),
        ("3", d("3.60"), "active"),
    ]


# ---------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------


def test_reader_reads_a_directory_in_name_order_and_reports_bad_files(tmp_path: Path) -> None:
    (tmp_path / "01_odds.xml").write_bytes(OPENING)
    (tmp_path / "02_broken.xml").write_bytes(b"<odds_change")
    (tmp_path / "03_settle.xml").write_bytes(SETTLE_1X2)
    (tmp_path / "04_rollback.xml").write_bytes(xml("rollback_bet_cancel", market("1")))
    (tmp_path / ".hidden").write_bytes(b"ignored")
    (tmp_path / "sub").mkdir()
    report = ReadReport()
    messages = list(read_uof(tmp_path, report))
    assert [type(m).__name__ for m in messages] == [
        "FeedEvent",
        "FeedMarket",
        "FeedMarket",
        "FeedResult",
    ]
    assert report.read == 3
    assert [(n, r.split(":")[0]) for n, r in report.skipped] == [
        (2, "02_broken.xml"),
        (4, "04_rollback.xml"),
    ]


def test_reader_reads_one_file_and_is_registered(tmp_path: Path) -> None:
    path = tmp_path / "one.xml"
    path.write_bytes(OPENING)
    assert len(list(read_uof(path, ReadReport()))) == 3
    assert READERS["uof"] is read_uof
    check_spec("uof:/some/dir")


# ---------------------------------------------------------------------------
# The real messages (minus5/go-uof-sdk test data)
# ---------------------------------------------------------------------------


def real(name: str) -> bytes:
    path = DATA / f"go-uof-sdk_{name}.xml"
    assert path.is_file(), f"missing test data {path} (expected beside the repository)"
    return path.read_bytes()


def test_real_odds_change() -> None:
    out = UofAdapter().translate(real("odds_change-0"))
    assert out.problems == []
    event = out.messages[0]
    assert isinstance(event, FeedEvent)
    assert (event.phase, event.score, event.clock) == ("live", (2, 2), Clock("2H", 4502, True))
    markets = {m.market_id: m for m in out.messages if isinstance(m, FeedMarket)}
    assert sorted(markets) == sorted(
        [
            "sr:match:123/47/score=41.5",
            "sr:match:123/48/score=42.5",
            "sr:match:123/123/game=3|point=1|set=2",
            "sr:match:123/188",
            "sr:match:123/899",
            "sr:match:123/888/player=sr:player:361790",
            "sr:match:123/891/goalnr=1|player=sr:player:122702",
        ]
    )  # 49 (inactive, no outcomes) and 145 (cancelled) are not created.
    assert markets["sr:match:123/123/game=3|point=1|set=2"].status == "suspended"
    player = {s.selection_id: s.price for s in markets["sr:match:123/188"].selections}
    assert player["sr:player:4322"] is None  # active="0"
    assert player["sr:player:71111"] == d("1.87")


def test_real_settlement() -> None:
    out = UofAdapter().translate(real("bet_settlement"))
    results = {m.market_id: m for m in out.messages if isinstance(m, FeedResult)}
    assert len(results) == 5
    half = results["sr:match:16807109/201"]
    assert half.results == (("863", "void"), ("864", "loser"), ("861", "winner"), ("862", "loser"))
    assert half.void_factors == (("864", d("0.5")), ("861", d("0.5")))
    heat = results["sr:match:16807109/535/variant=pre:markettext:52751"]
    assert heat.dead_heat == (
        ("pre:outcometext:6388892", d("0.5")),
        ("pre:outcometext:6408970", d("0.5")),
    )


def test_real_cancel_is_windowed() -> None:
    adapter = UofAdapter()
    assert adapter.translate(real("bet_cancel")).messages == []
    assert adapter.stats.partial_cancels == 1


def test_real_rollback_of_a_cancel() -> None:
    adapter = UofAdapter()
    adapter.translate(
        b'<odds_change event_id="sr:match:4444" timestamp="1230"><odds>'
        b'<market id="48" specifiers="score=41.5"><outcome id="1" odds="1.5" active="1"/>'
        b"</market></odds></odds_change>"
    )
    adapter.translate(
        b'<bet_cancel event_id="sr:match:4444" timestamp="1235">'
        b'<market id="48" specifiers="score=41.5" void_reason="1"/></bet_cancel>'
    )
    out = adapter.translate(real("rollback_bet_cancel"))
    assert out.messages == [
        FeedResult("sr:match:4444", "sr:match:4444/48/score=41.5", 1239, rollback=True)
    ]
