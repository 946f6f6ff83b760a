"""The Betfair stream adapter: cache merging, images, ladders, statuses and settlement,
and the recording reader's reporting of what it cannot read."""

from __future__ import annotations

import bz2
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.betfair import BetfairAdapter, BetfairError, _PriceLadder, read_betfair
from feeds.book import Books
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    decode_feed,
    encode_feed,
)
from feeds.replay import ReadReport
from feeds.sources import READERS, check_spec
from tests.data import FEEDS as DATA

ENVELOPES = DATA / "betfair" / "envelope"

MARKET = "1.100"
PT = 1_650_000_000_000


def d(value: str) -> Decimal:
    return Decimal(value)


def runner(rid: int, status: str = "ACTIVE", **extra: Any) -> dict[str, Any]:
    return {"id": rid, "status": status, "sortPriority": rid, **extra}


def definition(
    status: str = "OPEN", runners: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "eventId": "777",
        "eventTypeId": "7",
        "marketType": "WIN",
        "name": "2m Hcap",
        "eventName": "Kempton 1st Jan",
        "venue": "Kempton",
        "openDate": "2022-01-01T12:00:00.000Z",
        "inPlay": False,
        "numberOfWinners": 1,
        "status": status,
        "runners": runners if runners is not None else [runner(1), runner(2), runner(3)],
        **extra,
    }


def mcm(*changes: dict[str, Any], pt: int = PT, **envelope: Any) -> bytes:
    return json.dumps({"op": "mcm", "clk": "A", "pt": pt, "mc": list(changes), **envelope}).encode()


def mc(**fields: Any) -> dict[str, Any]:
    return {"id": MARKET, **fields}


def adapter_after(*records: bytes) -> BetfairAdapter:
    adapter = BetfairAdapter()
    for record in records:
        adapter.translate(record)
    return adapter


OPENED = mcm(mc(marketDefinition=definition(), img=True))


def only(messages: list[FeedMessage], kind: type[Any]) -> Any:
    matching = [m for m in messages if isinstance(m, kind)]
    assert len(matching) == 1, messages
    return matching[0]


def prices(messages: list[FeedMessage]) -> dict[str, FeedPrice]:
    return {p.selection_id: p for p in only(messages, FeedOdds).prices}


# ---------------------------------------------------------------------------
# Definitions, events and statuses
# ---------------------------------------------------------------------------


def test_first_definition_is_an_event_then_a_market() -> None:
    out = BetfairAdapter().translate(OPENED)
    event, market = out.messages
    assert out.problems == []
    assert event == FeedEvent(
        event_id="777",
        ts=PT,
        sport="horse_racing",
        competition="Kempton",
        home="Kempton 1st Jan",
        away="",
        start_time=1_641_038_400_000,
        phase="pre",
    )
    assert isinstance(market, FeedMarket)
    assert (market.market_id, market.market_kind, market.name, market.main) == (
        MARKET,
        "win",
        "2m Hcap",
        True,
    )
    assert [s.selection_id for s in market.selections] == ["1", "2", "3"]
    assert market.status == "open"


@pytest.mark.parametrize(
    ("type_id", "sport"),
    [
        ("1", "football"),
        ("2", "tennis"),
        ("4", "cricket"),
        ("7", "horse_racing"),
        ("4339", "greyhounds"),
        ("99", "betfair_99"),
    ],
)
def test_sports(type_id: str, sport: str) -> None:
    out = BetfairAdapter().translate(mcm(mc(marketDefinition=definition(eventTypeId=type_id))))
    assert only(out.messages, FeedMarket).sport == sport


def test_match_names_split_into_home_and_away_and_missing_event_id_uses_the_market() -> None:
    record = mcm(
        mc(marketDefinition=definition(eventName="Arsenal v Chelsea", eventId=None, venue=None))
    )
    event = only(BetfairAdapter().translate(record).messages, FeedEvent)
    assert (event.event_id, event.home, event.away) == (MARKET, "Arsenal", "Chelsea")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("OPEN", ("open", None)),
        ("SUSPENDED", ("suspended", None)),
        ("INACTIVE", ("suspended", "inactive")),
        ("CLOSED", ("closed", None)),
        ("SOMETHING_NEW", ("suspended", "unknown_status")),
    ],
)
def test_market_status(status: str, expected: tuple[str, str | None]) -> None:
    out = adapter_after(OPENED).translate(mcm(mc(marketDefinition=definition(status))))
    market = only(out.messages, FeedMarket)
    assert (market.status, market.reason) == expected


def test_in_play_makes_the_event_live_and_closing_every_market_ends_it() -> None:
    adapter = adapter_after(OPENED)
    live = adapter.translate(mcm(mc(marketDefinition=definition(inPlay=True)), pt=PT + 1))
    assert only(live.messages, FeedEvent).phase == "live"
    again = adapter.translate(mcm(mc(marketDefinition=definition(inPlay=True)), pt=PT + 2))
    assert not [m for m in again.messages if isinstance(m, FeedEvent)]
    closed = adapter.translate(
        mcm(mc(marketDefinition=definition("CLOSED", inPlay=False)), pt=PT + 3)
    )
    assert only(closed.messages, FeedEvent).phase == "ended"


def test_removed_runner_keeps_its_adjustment_factor_and_removal_time() -> None:
    adapter = adapter_after(OPENED, mcm(mc(rc=[{"id": 2, "atb": [[5.0, 10]], "ltp": 5.1}])))
    out = adapter.translate(
        mcm(
            mc(
                marketDefinition=definition(
                    runners=[
                        runner(1, adjustmentFactor=60.1),
                        runner(
                            2,
                            "REMOVED",
                            adjustmentFactor=22.12,
                            removalDate="2022-01-01T11:59:00.000Z",
                        ),
                        runner(3, adjustmentFactor=17.78),
                    ]
                )
            )
        )
    )
    removed = only(out.messages, FeedMarket).selections[1]
    assert removed.selection_id == "2"
    assert (removed.status, removed.price, removed.back, removed.lay) == ("removed", None, (), ())
    assert (removed.adjustment, removed.removed_at, removed.ltp) == (
        d("22.12"),
        1_641_038_340_000,
        d("5.1"),
    )
    # The books accept it and show it.
    books = Books(lambda m: "e")
    for message in [*BetfairAdapter().translate(OPENED).messages, *out.messages]:
        books.apply(message)
    shown = books.markets[MARKET].snapshot.selections[1]
    assert (shown.status, shown.adjustment) == ("removed", d("22.12"))


# ---------------------------------------------------------------------------
# Ladders
# ---------------------------------------------------------------------------


def test_full_ladders_merge_by_price_and_size_zero_removes_a_level() -> None:
    adapter = adapter_after(OPENED)
    first = adapter.translate(
        mcm(
            mc(
                rc=[
                    {
                        "id": 1,
                        "atb": [[2.5, 10], [2.6, 5], [2.4, 1], [2.3, 7]],
                        "atl": [[2.8, 3], [2.7, 4], [3.0, 9], [2.9, 1]],
                    }
                ]
            )
        )
    )
    price = prices(first.messages)["1"]
    assert price.price == d("2.6")
    assert price.back == ((d("2.6"), d("5")), (d("2.5"), d("10")), (d("2.4"), d("1")))
    assert price.lay == ((d("2.7"), d("4")), (d("2.8"), d("3")), (d("2.9"), d("1")))
    second = adapter.translate(mcm(mc(rc=[{"id": 1, "atb": [[2.6, 0], [2.5, 12]], "atl": []}])))
    price = prices(second.messages)["1"]
    assert price.price == d("2.5")
    assert price.back == ((d("2.5"), d("12")), (d("2.4"), d("1")), (d("2.3"), d("7")))
    assert price.lay == ((d("2.7"), d("4")), (d("2.8"), d("3")), (d("2.9"), d("1")))


def test_index_ladders_merge_by_level_and_size_zero_removes_it() -> None:
    adapter = adapter_after(OPENED)
    adapter.translate(
        mcm(mc(rc=[{"id": 1, "batb": [[0, 2.5, 10], [1, 2.4, 3]], "batl": [[0, 2.6, 1]]}]))
    )
    out = adapter.translate(mcm(mc(rc=[{"id": 1, "batb": [[0, 2.5, 0]], "batl": [[0, 0, 0]]}])))
    price = prices(out.messages)["1"]
    assert (price.price, price.back, price.lay) == (d("2.4"), ((d("2.4"), d("3")),), ())


def test_display_ladder_is_preferred_over_full_depth() -> None:
    adapter = adapter_after(OPENED)
    adapter.translate(mcm(mc(rc=[{"id": 1, "atb": [[3.0, 5]], "atl": [[3.2, 5]]}])))
    out = adapter.translate(
        mcm(mc(rc=[{"id": 1, "bdatb": [[0, 3.1, 7]], "bdatl": [[0, 3.15, 2]]}]))
    )
    price = prices(out.messages)["1"]
    assert (price.back, price.lay) == (((d("3.1"), d("7")),), ((d("3.15"), d("2")),))


def test_traded_volume_last_traded_price_and_market_volume_survive() -> None:
    adapter = adapter_after(OPENED)
    out = adapter.translate(
        mcm(mc(tv=100.5, rc=[{"id": 1, "ltp": 2.5, "trd": [[2.5, 60], [2.6, 40.5]]}]))
    )
    odds = only(out.messages, FeedOdds)
    assert odds.volume == d("100.5")
    assert (odds.prices[0].ltp, odds.prices[0].volume) == (d("2.5"), d("100.5"))
    out = adapter.translate(mcm(mc(rc=[{"id": 1, "tv": 120, "ltp": 0}])))
    price = prices(out.messages)["1"]
    assert (price.volume, price.ltp) == (d("120"), None)  # ltp 0: nothing traded.
    assert only(out.messages, FeedOdds).volume is not None  # unset, not cleared
    assert "volume" not in json.loads(encode_feed(only(out.messages, FeedOdds)))


def test_prices_keep_their_exact_text() -> None:
    adapter = adapter_after(OPENED)
    out = adapter.translate(
        b'{"op":"mcm","pt":1,"mc":[{"id":"1.100","rc":[{"id":1,"atb":[[2.10,1.50]]}]}]}'
    )
    raw = json.loads(encode_feed(only(out.messages, FeedOdds)))
    assert raw["prices"][0]["back"] == [["2.10", "1.50"]]


def test_a_runner_twice_in_one_change_is_merged_in_order_and_sent_once() -> None:
    adapter = adapter_after(OPENED)
    out = adapter.translate(
        mcm(mc(rc=[{"id": 1, "atb": [[2.5, 10]]}, {"id": 1, "atb": [[2.5, 0], [2.4, 2]]}]))
    )
    assert list(prices(out.messages)) == ["1"]
    assert prices(out.messages)["1"].back == ((d("2.4"), d("2")),)


def test_handicap_runners_are_separate_selections() -> None:
    runners = [runner(1, hc=-1.5), runner(1, hc=1.5), runner(2)]
    adapter = BetfairAdapter()
    market = only(
        adapter.translate(mcm(mc(marketDefinition=definition(runners=runners)))).messages,
        FeedMarket,
    )
    assert [s.selection_id for s in market.selections] == ["1:-1.5", "1:1.5", "2"]
    out = adapter.translate(mcm(mc(rc=[{"id": 1, "hc": 1.5, "atb": [[1.9, 5]]}])))
    assert list(prices(out.messages)) == ["1:1.5"]


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def test_an_image_replaces_the_cache_and_a_delta_merges() -> None:
    adapter = adapter_after(
        OPENED,
        mcm(mc(rc=[{"id": 1, "atb": [[2.0, 5], [1.9, 5]]}, {"id": 2, "atb": [[4.0, 1]]}])),
    )
    merged = adapter.translate(mcm(mc(rc=[{"id": 1, "atb": [[2.1, 3]]}])))
    assert prices(merged.messages)["1"].back == (
        (d("2.1"), d("3")),
        (d("2.0"), d("5")),
        (d("1.9"), d("5")),
    )
    image = adapter.translate(
        mcm(mc(img=True, marketDefinition=definition(), rc=[{"id": 1, "atb": [[1.8, 9]]}]))
    )
    market = only(image.messages, FeedMarket)
    by_id = {s.selection_id: s for s in market.selections}
    assert by_id["1"].back == ((d("1.8"), d("9")),)  # Not merged with 2.1 / 2.0.
    assert (by_id["2"].back, by_id["2"].price) == ((), None)  # Absent from the image.


def test_a_sub_image_envelope_is_an_image() -> None:
    adapter = adapter_after(OPENED, mcm(mc(rc=[{"id": 3, "atb": [[7.0, 1]]}])))
    out = adapter.translate(
        mcm(mc(marketDefinition=definition(), rc=[{"id": 1, "atb": [[2.0, 1]]}]), ct="SUB_IMAGE")
    )
    by_id = {s.selection_id: s for s in only(out.messages, FeedMarket).selections}
    assert (by_id["1"].price, by_id["3"].price) == (d("2.0"), None)
    assert adapter.stats.images == 2


def test_conflated_changes_are_counted_and_applied() -> None:
    adapter = adapter_after(OPENED)
    out = adapter.translate(mcm(mc(con=True, rc=[{"id": 1, "atb": [[2.0, 1]]}])))
    assert prices(out.messages)["1"].price == d("2.0")
    assert adapter.stats.conflated == 1


# ---------------------------------------------------------------------------
# Settlement
# ---------------------------------------------------------------------------


def test_the_final_definition_closes_then_settles_and_nothing_follows() -> None:
    adapter = adapter_after(OPENED, mcm(mc(rc=[{"id": 1, "ltp": 3.0}])))
    final = definition(
        "CLOSED",
        runners=[
            runner(1, "WINNER", bsp=3.05),
            runner(2, "LOSER", bsp=4.2),
            runner(3, "REMOVED", adjustmentFactor=10),
        ],
    )
    out = adapter.translate(mcm(mc(marketDefinition=final)))
    kinds = [type(m).__name__ for m in out.messages]
    assert kinds == ["FeedEvent", "FeedMarket", "FeedResult"]
    market = only(out.messages, FeedMarket)
    assert market.status == "closed"
    assert [(s.selection_id, s.status, s.bsp) for s in market.selections] == [
        ("1", "active", d("3.05")),
        ("2", "active", d("4.2")),
        ("3", "removed", None),
    ]
    assert only(out.messages, FeedResult).results == (("1", "winner"), ("2", "loser"))
    assert adapter.translate(mcm(mc(marketDefinition=final))).messages == []
    assert adapter.translate(mcm(mc(rc=[{"id": 1, "atb": [[2.0, 1]]}]))).messages == []
    assert adapter.stats.after_close == 2


def test_placed_means_winner_in_a_place_market() -> None:
    final = definition(
        "CLOSED",
        marketType="PLACE",
        numberOfWinners=2,
        runners=[runner(1, "PLACED"), runner(2, "WINNER"), runner(3, "LOSER")],
    )
    out = adapter_after(OPENED).translate(mcm(mc(marketDefinition=final)))
    assert only(out.messages, FeedResult).results == (
        ("1", "winner"),
        ("2", "winner"),
        ("3", "loser"),
    )


def test_closed_without_results_waits_for_them() -> None:
    adapter = adapter_after(OPENED)
    first = adapter.translate(mcm(mc(marketDefinition=definition("CLOSED"))))
    assert [type(m).__name__ for m in first.messages] == ["FeedEvent", "FeedMarket"]
    late = definition("CLOSED", runners=[runner(1, "LOSER"), runner(2, "WINNER"), runner(3)])
    second = adapter.translate(mcm(mc(marketDefinition=late)))
    assert [type(m).__name__ for m in second.messages] == ["FeedResult"]


def test_the_books_take_the_whole_life_of_a_market() -> None:
    adapter = BetfairAdapter()
    records = [
        OPENED,
        mcm(mc(rc=[{"id": 1, "atb": [[2.0, 5]], "atl": [[2.02, 5]]}])),
        mcm(mc(marketDefinition=definition("SUSPENDED", inPlay=True))),
        mcm(mc(marketDefinition=definition("OPEN", inPlay=True))),
        mcm(mc(marketDefinition=definition("CLOSED", runners=[runner(1, "WINNER")]))),
    ]
    books = Books(lambda m: "e")
    for record in records:
        for message in adapter.translate(record).messages:
            assert decode_feed(encode_feed(message)) == message
            books.apply(message)
    book = books.markets[MARKET].snapshot
    assert book.status == "settled"
    assert [(s.selection_id, s.status) for s in book.selections] == [
        ("1", "winner"),
        ("2", "loser"),
        ("3", "loser"),
    ]
    assert book.selections[0].back == ((d("2.0"), d("5")),)
    assert books.events["777"].phase == "ended"


# ---------------------------------------------------------------------------
# Envelope, heartbeats and what cannot be read
# ---------------------------------------------------------------------------


def test_heartbeat_produces_nothing_and_keeps_the_clock() -> None:
    adapter = BetfairAdapter()
    out = adapter.translate(b'{"op":"mcm","id":2,"clk":"AAA","pt":1,"ct":"HEARTBEAT"}')
    assert out == ([], [])
    assert (adapter.stats.heartbeats, adapter.clk) == (1, "AAA")


def test_other_ops_produce_nothing() -> None:
    adapter = BetfairAdapter()
    assert adapter.translate(b'{"op":"connection","connectionId":"x"}') == ([], [])
    assert adapter.translate(b'{"op":"status","statusCode":"SUCCESS"}') == ([], [])
    assert adapter.stats.other_ops == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not a Betfair stream message"),
        (b"[1, 2]", "not a Betfair stream message"),
        (b'{"op":"mcm","pt":"yesterday","mc":[]}', "not a Betfair stream message"),
        (b'{"op":"mcm","mc":[]}', "without a publish time"),
        (b'{"op":"mcm","pt":1,"mc":[{"id":"1.1","rc":[{"id":1,"atb":[["x",1]]}]}]}', "stream"),
        (b'{"op":"orders"}', "unknown op"),
    ],
)
def test_unreadable_records_raise(raw: bytes, reason: str) -> None:
    with pytest.raises(BetfairError, match=reason):
        BetfairAdapter().translate(raw)


def test_changes_that_cannot_apply_are_problems_not_errors() -> None:
    adapter = BetfairAdapter()
    early = adapter.translate(mcm(mc(rc=[{"id": 1, "atb": [[2.0, 1]]}])))
    assert early == ([], ["market 1.100: change before its market definition"])
    adapter.translate(OPENED)
    stray = adapter.translate(mcm(mc(rc=[{"id": 9, "atb": [[2.0, 1]]}, {"id": 1, "ltp": 2}])))
    assert stray.problems == ["market 1.100: runner 9 is not in its definition"]
    assert list(prices(stray.messages)) == ["1"]


def test_reader_reports_bad_lines_with_their_numbers(tmp_path: Path) -> None:
    lines = [
        OPENED,
        b"",
        b"{broken",
        mcm(mc(rc=[{"id": 1, "atb": [[2.0, 1]]}])),
        b'{"op":"mcm","id":2,"clk":"B","pt":2,"ct":"HEARTBEAT"}',
        b'{"op":"nope"}',
        mcm(mc(id="1.999", rc=[{"id": 1, "ltp": 2}])),
    ]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = ReadReport()
    messages = list(read_betfair(path, report))
    assert [type(m).__name__ for m in messages] == ["FeedEvent", "FeedMarket", "FeedOdds"]
    assert report.read == 4
    assert [(n, r.split(":")[0]) for n, r in report.skipped] == [
        (3, "not a Betfair stream message"),
        (6, "unknown op 'nope'"),
        (7, "market 1.999"),
    ]


def test_reader_reads_bz2_and_reports_a_truncated_file(tmp_path: Path) -> None:
    data = b"\n".join([OPENED, mcm(mc(rc=[{"id": 1, "atb": [[2.0, 1]]}]))] * 200) + b"\n"
    whole = tmp_path / "rec.jsonl.bz2"
    whole.write_bytes(bz2.compress(data))
    report = ReadReport()
    assert len(list(read_betfair(whole, report))) == 400 + 1  # one event message
    assert (report.read, report.skipped) == (400, [])
    cut = tmp_path / "cut.jsonl.bz2"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    report = ReadReport()
    list(read_betfair(cut, report))
    assert len(report.skipped) == 1
    assert "unreadable from here on" in report.skipped[0][1]


def test_registered_as_a_feed_format() -> None:
    assert READERS["betfair"] is read_betfair
    check_spec("betfair:/tmp/x.jsonl.bz2")


# ---------------------------------------------------------------------------
# The real live-protocol envelopes (betcode-org/betfair test resources)
# ---------------------------------------------------------------------------


def _envelope(name: str) -> Path:
    path = ENVELOPES / f"bflw_streaming_{name}.json"
    assert path.is_file(), f"missing test data {path} (expected beside the repository)"
    return path


def test_real_sub_image_envelope() -> None:
    report = ReadReport()
    messages = list(read_betfair(_envelope("mcm_SUB_IMAGE"), report))
    assert report.skipped == []
    market = only(messages, FeedMarket)
    assert market.market_id == "1.126235656"
    by_id = {s.selection_id: s for s in market.selections}
    assert by_id["11131804"].back == ((d("2.54"), d("7.95")),)
    assert by_id["11131804"].lay == ((d("2.72"), d("8.8")),)
    assert by_id["11131804"].ltp is None  # sent as 0
    Books(lambda m: "e").apply(market)


def test_real_resub_delta_envelope_without_a_cache() -> None:
    report = ReadReport()
    messages = list(read_betfair(_envelope("mcm_RESUB_DELTA"), report))
    source = json.loads(_envelope("mcm_RESUB_DELTA").read_bytes())
    defined = {m["id"] for m in source["mc"] if "marketDefinition" in m}
    assert {m.market_id for m in messages if isinstance(m, FeedMarket)} == defined
    assert len(report.skipped) == len(source["mc"]) - len(defined)
    assert {n for n, _ in report.skipped} == {1}


@pytest.mark.parametrize("name", ["mcm_HEARTBEAT", "connection", "status"])
def test_real_envelopes_without_market_data(name: str) -> None:
    report = ReadReport()
    assert list(read_betfair(_envelope(name), report)) == []
    assert (report.read, report.skipped) == (1, [])


def test_real_definition_update_envelope() -> None:
    messages = list(read_betfair(_envelope("mcm_UPDATE_md"), ReadReport()))
    assert only(messages, FeedMarket).status == "suspended"
    assert only(messages, FeedEvent).phase == "live"


# ---------------------------------------------------------------------------
# Whatever arrives, the adapter answers with messages or a BetfairError
# ---------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "op",
        "pt",
        "ct",
        "clk",
        "mc",
        "id",
        "img",
        "con",
        "tv",
        "rc",
        "marketDefinition",
        "status",
        "inPlay",
        "runners",
        "atb",
        "atl",
        "batb",
        "bdatl",
        "trd",
        "ltp",
        "hc",
        "eventId",
        "eventTypeId",
        "marketType",
        "openDate",
        "adjustmentFactor",
        "bsp",
    ]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 2**40)
    | st.floats(-10, 1e6)
    | st.text(max_size=8)
    | st.sampled_from(["mcm", "OPEN", "CLOSED", "WINNER", "SUB_IMAGE", "HEARTBEAT", "1.1"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON, min_size=1, max_size=4))
def test_arbitrary_records_never_raise_anything_else(records: list[Any]) -> None:
    adapter = adapter_after(OPENED)
    for value in records:
        raw = json.dumps({"op": "mcm", "pt": 1, **value} if isinstance(value, dict) else value)
        try:
            out = adapter.translate(raw.encode())
        except BetfairError:
            continue
        for message in out.messages:
            assert decode_feed(encode_feed(message)) == message


_LADDER_PRICES = st.sampled_from([d(p) for p in ("1.01", "1.5", "2", "2.02", "3.45", "10", "1000")])
_LADDER_SIZES = st.sampled_from([d(s) for s in ("0", "0", "2", "5.5", "100")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(_LADDER_PRICES, _LADDER_SIZES), max_size=6), max_size=12))
def test_full_depth_ladder_keeps_the_best_levels_of_a_plain_merge(
    updates: list[list[tuple[Decimal, Decimal]]],
) -> None:
    """The sorted full-depth ladder gives, after any sequence of changes (size 0 removes a
    level, absent or present), the best three levels a full sort of the merged prices gives."""
    ladder = _PriceLadder()
    plain: dict[Decimal, Decimal] = {}
    for update in updates:
        ladder.merge(update)
        for price, size in update:
            if size:
                plain[price] = size
            else:
                plain.pop(price, None)
        assert ladder.highest() == tuple((p, plain[p]) for p in sorted(plain, reverse=True)[:3])
        assert ladder.lowest() == tuple((p, plain[p]) for p in sorted(plain)[:3])
    ladder.clear()
    assert ladder.highest() == ladder.lowest() == ()
