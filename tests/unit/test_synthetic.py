"""The synthetic match day: determinism, ordering, market life cycles, prices, settlement."""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from feeds import synthetic
from feeds.book import Books
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedResult,
    decode_feed,
    encode_feed,
)
from feeds.synthetic import MatchDay, TennisModel, football_probabilities

# About five simulated hours of six concurrent events: every event of the first batch
# ends and some of the next batch end too.
DAY_EVENTS = 6
DAY_MESSAGES = 40_000


@cache
def day() -> tuple[FeedMessage, ...]:
    return tuple(itertools.islice(MatchDay(seed=11, events=DAY_EVENTS), DAY_MESSAGES))


def take(n: int, **kwargs: Any) -> list[FeedMessage]:
    return list(itertools.islice(MatchDay(**kwargs), n))


def events_of(messages: tuple[FeedMessage, ...]) -> dict[str, list[FeedMessage]]:
    by_event: dict[str, list[FeedMessage]] = defaultdict(list)
    for m in messages:
        by_event[m.event_id].append(m)
    return by_event


def ended(messages: tuple[FeedMessage, ...]) -> Iterator[tuple[str, list[FeedMessage]]]:
    """Each event whose final FeedEvent is in the stream, with its messages."""
    for event_id, ms in events_of(messages).items():
        last = ms[-1]
        if isinstance(last, FeedEvent) and last.phase == "ended":
            yield event_id, ms


def results_of(ms: list[FeedMessage]) -> dict[str, FeedResult]:
    return {m.market_id: m for m in ms if isinstance(m, FeedResult)}


def winners(result: FeedResult) -> list[str]:
    return [sid for sid, status in result.results if status == "winner"]


# ---------------------------------------------------------------------------
# The stream as a whole
# ---------------------------------------------------------------------------


def test_same_seed_gives_the_same_stream_every_iteration() -> None:
    match_day = MatchDay(seed=5, events=4)
    first = list(itertools.islice(match_day, 3_000))
    assert list(itertools.islice(match_day, 3_000)) == first
    assert take(3_000, seed=5, events=4) == first


def test_different_seeds_give_different_streams() -> None:
    assert take(2_000, seed=1) != take(2_000, seed=2)


def test_ts_starts_at_start_ms_and_never_decreases() -> None:
    assert take(1, start_ms=1_000_000)[0].ts == 1_000_000
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(day()))


def test_identifiers_follow_the_naming_scheme() -> None:
    for m in day():
        assert re.fullmatch(r"(fb|tn)-\d{4}", m.event_id)
        if isinstance(m, FeedEvent):
            assert m.sport == ("football" if m.event_id.startswith("fb") else "tennis")
            assert m.home != m.away
        else:
            assert m.market_id.startswith(m.event_id + ":")
        if isinstance(m, FeedMarket):
            assert m.market_id == f"{m.event_id}:{m.market_kind}"


def test_both_sports_appear_and_main_markets_are_flagged() -> None:
    sports = {m.sport for m in day() if isinstance(m, FeedEvent)}
    assert sports == {"football", "tennis"}
    main = {m.market_kind for m in day() if isinstance(m, FeedMarket) and m.main}
    assert main == {"1x2", "match_winner"}


@pytest.mark.parametrize(("sports", "prefix"), [(("football",), "fb"), (("tennis",), "tn")])
def test_a_single_sport_can_be_chosen(sports: tuple[str, ...], prefix: str) -> None:
    messages = list(itertools.islice(MatchDay(sports=sports, events=3), 2_000))
    assert {m.event_id[:2] for m in messages} == {prefix}


def test_new_events_replace_ended_ones_and_the_stream_goes_on() -> None:
    messages = day()
    active: set[str] = set()
    announced: list[str] = []
    first_end = None
    for m in messages:
        if isinstance(m, FeedEvent):
            if m.event_id not in active and m.phase == "pre":
                assert m.event_id not in announced, "an event id is never reused"
                announced.append(m.event_id)
                active.add(m.event_id)
                if len(announced) > DAY_EVENTS:
                    assert first_end is not None and m.ts > first_end
            elif m.phase == "ended":
                active.discard(m.event_id)
                first_end = first_end or m.ts
            assert len(active) <= DAY_EVENTS
    assert len(announced) > 2 * DAY_EVENTS


def test_feed_messages_round_trip_through_the_wire_encoding() -> None:
    for m in day()[:5_000]:
        assert decode_feed(encode_feed(m)) == m


def test_the_market_book_accepts_the_whole_stream() -> None:
    books = Books(lambda market_id: "e1")
    for m in day():
        books.apply(m)  # raises FeedRejected on any inconsistency


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0}, "events"),
        ({"odds_interval_ms": 0}, "odds_interval_ms"),
        ({"sports": ()}, "sports"),
        ({"sports": ("football", "curling")}, "curling"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchDay(**kwargs)  # type: ignore[arg-type]


def test_a_shorter_odds_interval_means_more_price_updates() -> None:
    def odds_per_hour(interval: int) -> float:
        messages = take(6_000, seed=4, events=4, sports=("football",), odds_interval_ms=interval)
        odds = sum(isinstance(m, FeedOdds) for m in messages)
        return odds / ((messages[-1].ts - messages[0].ts) / 3_600_000)

    assert odds_per_hour(1_000) > 1.5 * odds_per_hour(4_000)


# ---------------------------------------------------------------------------
# Market life cycle
# ---------------------------------------------------------------------------


def test_markets_are_defined_first_and_closed_before_settlement() -> None:
    status: dict[str, str] = {}
    for m in day():
        if isinstance(m, FeedEvent):
            continue
        if isinstance(m, FeedMarket):
            assert m.market_id not in status, "defined once"
            status[m.market_id] = m.status
            continue
        assert m.market_id in status, f"{type(m).__name__} before definition"
        current = status[m.market_id]
        assert current not in ("settled", "voided"), "nothing after the result"
        if isinstance(m, FeedResult):
            assert current == "closed"
            status[m.market_id] = "voided" if m.void else "settled"
        elif isinstance(m, FeedOdds):
            assert current in ("open", "suspended")
            assert m.prices, "an update lists at least one selection"
        else:
            assert current != "closed", "a closed market only gets its result"
            status[m.market_id] = m.status


def test_every_ended_event_has_every_market_closed_then_settled() -> None:
    seen = 0
    for event_id, ms in ended(day()):
        seen += 1
        definitions = {m.market_id: m for m in ms if isinstance(m, FeedMarket)}
        results = results_of(ms)
        assert set(results) == set(definitions), event_id
        for market_id, result in results.items():
            closed = [
                i
                for i, m in enumerate(ms)
                if isinstance(m, FeedMarketStatus)
                and m.market_id == market_id
                and m.status == "closed"
            ]
            assert len(closed) == 1 and closed[0] < ms.index(result)
            if not result.void:
                ids = {s.selection_id for s in definitions[market_id].selections}
                assert {sid for sid, _ in result.results} == ids
                assert len(winners(result)) == 1
                assert {status for _, status in result.results} <= {"winner", "loser"}
    assert seen >= DAY_EVENTS


def test_odds_list_only_selections_whose_price_changed() -> None:
    prices: dict[str, dict[str, tuple[Decimal | None, str]]] = {}
    for m in day():
        if isinstance(m, FeedMarket):
            prices[m.market_id] = {s.selection_id: (s.price, s.status) for s in m.selections}
        elif isinstance(m, FeedOdds):
            book = prices[m.market_id]
            for p in m.prices:
                new = (p.price, p.status or book[p.selection_id][1])
                assert new != book[p.selection_id], (m.market_id, p)
                book[p.selection_id] = new


def test_prices_are_two_place_decimals_on_the_ladder() -> None:
    for m in day():
        if isinstance(m, FeedMarket):
            prices = [s.price for s in m.selections]
        elif isinstance(m, FeedOdds):
            prices = [p.price for p in m.prices]
        else:
            continue
        for price in prices:
            if price is None:
                # Only outcomes that can no longer happen lose their price.
                assert m.market_id.endswith((":correct_score", ":set_betting")), m
                continue
            assert isinstance(price, Decimal)
            assert price.as_tuple().exponent == -2
            assert Decimal("1.01") <= price <= Decimal("1000.00")


@pytest.mark.parametrize("kind", ["1x2", "match_winner", "next_goal_1", "ou_2.5"])
def test_open_markets_carry_a_book_margin(kind: str) -> None:
    prices: dict[str, dict[str, Decimal | None]] = {}
    status: dict[str, str] = {}
    books = []
    for m in day():
        if isinstance(m, FeedEvent) or not m.market_id.endswith(":" + kind):
            continue
        if isinstance(m, FeedMarket):
            prices[m.market_id] = {s.selection_id: s.price for s in m.selections}
            status[m.market_id] = m.status
        elif isinstance(m, FeedOdds):
            prices[m.market_id].update({p.selection_id: p.price for p in m.prices})
        elif isinstance(m, FeedMarketStatus):
            status[m.market_id] = m.status
        else:
            continue
        if status[m.market_id] == "open":
            book = sum(1 / float(p) for p in prices[m.market_id].values() if p is not None)
            books.append(book)
            assert 1.02 <= book <= 1.10, (m, prices[m.market_id])
    assert len(books) > 1_000


# ---------------------------------------------------------------------------
# Football
# ---------------------------------------------------------------------------


def football_events() -> Iterator[tuple[str, list[FeedMessage]]]:
    return ((e, ms) for e, ms in ended(day()) if e.startswith("fb"))


def test_football_follows_a_match_timeline() -> None:
    for event_id, ms in football_events():
        states = [m for m in ms if isinstance(m, FeedEvent)]
        assert states[0].phase == "pre" and states[0].clock is None
        assert states[0].start_time > states[0].ts
        periods = [s.clock.period for s in states if s.clock is not None]
        assert [p for p, _ in itertools.groupby(periods)] == ["1H", "HT", "2H", "FT"], event_id
        kick_off = next(s for s in states if s.phase == "live")
        assert kick_off.ts >= kick_off.start_time
        full_time = states[-1]
        assert full_time.clock is not None and full_time.clock.seconds >= 5_400
        assert full_time.ts - kick_off.ts >= 105 * 60_000, "90 minutes and half time"


def test_football_settlement_agrees_with_the_final_score() -> None:
    for event_id, ms in football_events():
        scorers: list[str] = []
        score = (0, 0)
        for m in ms:
            if isinstance(m, FeedEvent) and m.score != score:
                if sum(m.score) > sum(score):
                    scorers.append("home" if m.score[0] > score[0] else "away")
                else:
                    scorers.pop()  # a goal overturned by VAR
                score = m.score
        h, a = score
        assert len(scorers) == h + a
        results = results_of(ms)
        expected = {
            "1x2": "home" if h > a else "away" if a > h else "draw",
            "ou_2.5": "over" if h + a > 2 else "under",
            "correct_score": f"{h}-{a}" if max(h, a) <= 3 else "other",
        }
        expected |= {f"next_goal_{n + 1}": side for n, side in enumerate(scorers)}
        expected[f"next_goal_{h + a + 1}"] = "no_goal"
        assert {k.split(":")[1]: winners(r) for k, r in results.items()} == {
            kind: [sid] for kind, sid in expected.items()
        }, event_id


def test_a_goal_suspends_every_open_market_until_it_reopens() -> None:
    goals = 0
    for _, ms in football_events():
        status: dict[str, tuple[str, str | None]] = {}
        score = (0, 0)
        for i, m in enumerate(ms):
            if isinstance(m, FeedMarket):
                status[m.market_id] = (m.status, None)
            elif isinstance(m, FeedMarketStatus):
                status[m.market_id] = (m.status, m.reason)
            elif isinstance(m, FeedEvent) and sum(m.score) > sum(score):
                goals += 1
                live = [k for k, (s, _) in status.items() if s in ("open", "suspended")]
                assert live and all(status[k] == ("suspended", "goal") for k in live)
                later = ms[i + 1 :]
                for market_id in live:
                    after = next(
                        x
                        for x in later
                        if isinstance(x, FeedMarketStatus)
                        and x.market_id == market_id
                        and x.status in ("open", "closed")
                    )
                    assert after.ts - m.ts >= 5_000, "reopened a few seconds later"
            elif isinstance(m, FeedEvent) and sum(m.score) < sum(score):
                live = [k for k, (s, _) in status.items() if s in ("open", "suspended")]
                assert all(status[k] == ("suspended", "var") for k in live)
            if isinstance(m, FeedEvent):
                score = m.score
    assert goals > 10


def test_a_goal_moves_the_prices() -> None:
    moved = 0
    for _, ms in football_events():
        last_goal = -1
        for i, m in enumerate(ms):
            if isinstance(m, FeedMarketStatus) and m.reason == "goal":
                last_goal = i
            if (
                isinstance(m, FeedMarketStatus)
                and m.status == "open"
                and m.market_id.endswith(":1x2")
                and last_goal >= 0
            ):
                between = ms[last_goal:i]
                moved += any(
                    isinstance(x, FeedOdds) and x.market_id == m.market_id for x in between
                )
                last_goal = -1
    assert moved > 10


# ---------------------------------------------------------------------------
# Tennis
# ---------------------------------------------------------------------------


def test_tennis_settles_by_sets_and_removes_lost_set_scores() -> None:
    seen = 0
    for event_id, ms in ended(day()):
        if not event_id.startswith("tn"):
            continue
        seen += 1
        final = ms[-1]
        assert isinstance(final, FeedEvent)
        results = results_of(ms)
        sets = results[f"{event_id}:set_betting"]
        if sets.void:
            continue
        home, away = final.score
        assert winners(sets) == [f"{home}-{away}"]
        assert winners(results[f"{event_id}:match_winner"]) == ["home" if home > away else "away"]
        periods = [m.clock.period for m in ms if isinstance(m, FeedEvent) and m.clock]
        assert periods[0] == "set 1"
        # After the first set, the set scores it made impossible leave the board.
        removed = {
            p.selection_id
            for m in ms
            if isinstance(m, FeedOdds)
            for p in m.prices
            if p.status == "removed"
        }
        assert removed and f"{home}-{away}" not in removed
    assert seen >= 2


def test_a_retirement_voids_set_betting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every match is then drawn to retire, though some finish before the point it is
    # drawn at.
    monkeypatch.setattr(synthetic, "_P_RETIREMENT", 1.0)
    messages = tuple(itertools.islice(MatchDay(seed=2, events=4, sports=("tennis",)), 10_000))
    books = Books(lambda market_id: "e1")
    for m in messages:
        books.apply(m)
    retired = 0
    for event_id, ms in ended(messages):
        if not any(isinstance(m, FeedMarketStatus) and m.reason == "retirement" for m in ms):
            continue
        retired += 1
        results = results_of(ms)
        assert results[f"{event_id}:set_betting"].void
        final = ms[-1]
        assert isinstance(final, FeedEvent)
        assert results[f"{event_id}:match_winner"].void == (final.score == (0, 0))
    assert retired >= 2


# ---------------------------------------------------------------------------
# The probability models
# ---------------------------------------------------------------------------


def poisson(mu: float, k: int) -> float:
    return math.exp(-mu) * mu**k / math.factorial(k)


@pytest.mark.parametrize(
    ("mu_home", "mu_away", "score"),
    [(1.6, 1.1, (0, 0)), (0.4, 0.9, (1, 0)), (0.05, 0.02, (2, 2)), (0.8, 0.8, (0, 3))],
)
def test_football_probabilities_match_a_brute_force_sum(
    mu_home: float, mu_away: float, score: tuple[int, int]
) -> None:
    p1x2, p_ou, p_cs, p_next = football_probabilities(mu_home, mu_away, score)
    h, a = score
    grid = {
        (h + i, a + j): poisson(mu_home, i) * poisson(mu_away, j)
        for i in range(30)
        for j in range(30)
    }
    brute = [
        sum(p for (x, y), p in grid.items() if x > y),
        sum(p for (x, y), p in grid.items() if x == y),
        sum(p for (x, y), p in grid.items() if x < y),
    ]
    # The tails are cut where they no longer move a price (terms under 1e-7).
    assert p1x2 == pytest.approx(brute, abs=1e-5)
    assert p_ou[0] == pytest.approx(sum(p for (x, y), p in grid.items() if x + y > 2), abs=1e-9)
    for (x, y), p in zip(synthetic._CS_SCORES, p_cs, strict=False):
        assert p == pytest.approx(grid.get((x, y), 0.0), abs=1e-9)
        assert (p == 0.0) == (x < h or y < a)
    for probs in (p1x2, p_ou, p_cs, p_next):
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("p_home", "p_away", "best_of", "low", "high"),
    [
        (0.64, 0.64, 3, 0.5, 0.5),
        (0.64, 0.64, 5, 0.5, 0.5),
        (0.68, 0.62, 3, 0.7, 0.9),
        (0.55, 0.60, 5, 0.1, 0.3),
    ],
)
def test_tennis_model_gives_a_consistent_match_price(
    p_home: float, p_away: float, best_of: int, low: float, high: float
) -> None:
    model = TennisModel(p_home, p_away, best_of)
    final = model.final_sets((0, 0), model.fresh_set)
    need = best_of // 2 + 1
    assert sum(final.values()) == pytest.approx(1.0)
    assert all(need in score and min(score) < need for score in final)
    home = sum(p for (x, _), p in final.items() if x == need)
    assert low - 1e-9 <= home <= high + 1e-9
