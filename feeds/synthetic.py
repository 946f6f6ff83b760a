"""A deterministic synthetic match day: seeded, sans-I/O source of neutral feed messages.

:class:`MatchDay` simulates a day of football and tennis matches in simulated time and
yields what a real odds feed would send, as :mod:`feeds.model` messages. It reads no
clock, does no I/O and uses no global random state: the stream is a pure function of the
constructor's arguments, so tests, demos and load runs are reproducible. Callers pace it
(by ``ts``) and bound it (``itertools.islice`` or a ``ts`` cut-off); it never ends.

Prices come from one probability model per match (independent Poisson goals for
football, serve-point probabilities for tennis), so an event's markets always agree with
each other; a book margin is added and each price is rounded to a realistic decimal-odds
ladder (``Decimal`` with two places, 1.01 to 1000.00).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from heapq import heapify, heapreplace
from itertools import accumulate, pairwise
from typing import ClassVar, Literal, NamedTuple

from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    FeedSelection,
)
from protocol import Clock, EventPhase, MarketStatus, SelectionStatus

__all__ = ["SPORTS", "MatchDay", "TennisModel", "football_probabilities"]

#: Sports the generator can simulate, by the ``sport`` value it emits.
SPORTS: tuple[str, ...] = ("football", "tennis")

# ---------------------------------------------------------------------------
# Price ladder and margin
# ---------------------------------------------------------------------------

# (upper bound in cents, tick in cents): the usual exchange-style ladder, finer where a
# tick is a large share of the implied probability.
_LADDER_STEPS = (
    (200, 1),
    (300, 2),
    (400, 5),
    (600, 10),
    (1_000, 20),
    (2_000, 50),
    (3_000, 100),
    (5_000, 200),
    (10_000, 500),
    (100_000, 1_000),
)


def _ladder_cents() -> list[int]:
    cents = [101]
    for upper, step in _LADDER_STEPS:
        while cents[-1] < upper:
            cents.append(cents[-1] + step)
    return cents


_CENTS = _ladder_cents()
# Shared immutable Decimals: a price is an index into this ladder until it is emitted, so
# "did the price change" is an int comparison and no Decimal is built per update.
_LADDER: tuple[Decimal, ...] = tuple(Decimal(c).scaleb(-2) for c in _CENTS)
# Midpoints between rungs: bisecting them rounds a fair price to the nearest rung.
_MIDS: list[float] = [(a + b) / 200 for a, b in pairwise(_CENTS)]
# The largest implied probability a price can express (1.01).
_Q_MAX = 1 / 1.01
# The thinnest book quoted, reached only when a favourite is held at 1.01.
_MIN_BOOK = 1.025


def _price_indices(probs: Sequence[float], target: float) -> list[int | None]:
    """Ladder indices for outcome probabilities with a total book of ``target`` (1 +
    margin). A probability of exactly 0 (the outcome can no longer happen) has no price.

    A favourite too likely to price under 1.01 is held there, which takes most of the
    margin with it. The outsiders keep their own prices unless the book would fall under
    :data:`_MIN_BOOK`; then they shorten together just enough to hold it. So a growing
    lead keeps lengthening the outsiders until the book is at its thinnest (3-0 with ten
    minutes left shows 1.01 / 30 / 940), and the book never gives its margin away.
    """
    qs = [p * target for p in probs]
    top = max(qs)
    if top > _Q_MAX:
        i = qs.index(top)
        qs[i] = _Q_MAX
        rest = sum(qs) - _Q_MAX
        if 0.0 < rest < _MIN_BOOK - _Q_MAX:
            scale = (_MIN_BOOK - _Q_MAX) / rest
            qs = [q * scale for q in qs]
            qs[i] = _Q_MAX
    mids = _MIDS
    return [bisect_left(mids, 1.0 / q) if q > 0.0 else None for q in qs]


# ---------------------------------------------------------------------------
# Markets and the shared match machinery
# ---------------------------------------------------------------------------

# Pre-match and half-time prices tick this many times less often than in-play ones.
_QUIET_SLOWDOWN = 10


class _Market:
    """What the generator remembers of a market it has defined: enough to emit only
    changes and to settle it."""

    __slots__ = (
        "drop_impossible",
        "kind",
        "market_id",
        "prices",
        "removed",
        "selection_ids",
        "status",
    )

    def __init__(
        self,
        market_id: str,
        kind: str,
        selection_ids: tuple[str, ...],
        prices: list[int | None],
        drop_impossible: bool,
    ) -> None:
        self.market_id = market_id
        self.kind = kind
        self.selection_ids = selection_ids
        self.prices = prices
        self.drop_impossible = drop_impossible
        self.removed = [False] * len(selection_ids)
        self.status: MarketStatus = "open"


class _Setup(NamedTuple):
    """What every match is created with."""

    rng: random.Random
    event_id: str
    competition: str
    home: str
    away: str
    announce_ts: int
    start_time: int
    interval_ms: int


class _Match:
    """One simulated event. :meth:`run` yields its messages in order, with non-decreasing
    ``ts``; the generator is exhausted after the final ``FeedEvent`` (phase ``ended``)."""

    sport: ClassVar[str]

    def __init__(self, setup: _Setup) -> None:
        rng = setup.rng
        self.rng = rng
        self.event_id = setup.event_id
        self.competition = setup.competition
        self.home = setup.home
        self.away = setup.away
        self.start_time = setup.start_time
        self.interval_ms = setup.interval_ms
        self.t = setup.announce_ts
        self.phase: EventPhase = "pre"
        self.score = (0, 0)
        self.clock: Clock | None = None
        self.markets: list[_Market] = []
        # One margin per event, as one trader would set it: 4.5% to 7%, so that after
        # rounding to the ladder a two- or three-way book stays within 2% to 10%.
        self.book = 1.0 + rng.uniform(0.045, 0.07)

    def run(self) -> Iterator[FeedMessage]:
        raise NotImplementedError

    def event(self) -> FeedEvent:
        return FeedEvent(
            event_id=self.event_id,
            ts=self.t,
            sport=self.sport,
            competition=self.competition,
            home=self.home,
            away=self.away,
            start_time=self.start_time,
            phase=self.phase,
            score=self.score,
            clock=self.clock,
        )

    def define(
        self,
        kind: str,
        name: str,
        selections: Sequence[tuple[str, str]],
        probs: Sequence[float],
        *,
        main: bool = False,
        drop_impossible: bool = False,
    ) -> tuple[_Market, FeedMarket]:
        """A new open market priced from ``probs``; impossible outcomes start unpriced
        (or ``removed`` when ``drop_impossible``)."""
        market_id = f"{self.event_id}:{kind}"
        ids = tuple(sid for sid, _ in selections)
        prices = _price_indices(probs, self.book)
        market = _Market(market_id, kind, ids, prices, drop_impossible)
        feed_selections = []
        for k, (sid, sname) in enumerate(selections):
            i = prices[k]
            status: SelectionStatus = "active"
            if i is None and drop_impossible:
                status = "removed"
                market.removed[k] = True
            feed_selections.append(
                FeedSelection(sid, sname, None if i is None else _LADDER[i], status)
            )
        self.markets.append(market)
        message = FeedMarket(
            event_id=self.event_id,
            market_id=market_id,
            ts=self.t,
            sport=self.sport,
            market_kind=kind,
            name=name,
            selections=tuple(feed_selections),
            main=main,
        )
        return market, message

    def reprice(self, market: _Market, probs: Sequence[float]) -> FeedOdds | None:
        """The selections whose rounded price moved, or None when none did."""
        new = _price_indices(probs, self.book)
        old = market.prices
        if new == old:
            return None
        changed = []
        for k, i in enumerate(new):
            if i == old[k]:
                continue
            sid = market.selection_ids[k]
            if i is not None:
                changed.append(FeedPrice(sid, _LADDER[i]))
            elif not market.drop_impossible:
                # A price of None clears it: the outcome is off the board for now (a
                # VAR decision can bring it back), but the selection still settles.
                changed.append(FeedPrice(sid, None))
            elif not market.removed[k]:
                market.removed[k] = True
                changed.append(FeedPrice(sid, None, "removed"))
        market.prices = new
        if not changed:
            return None
        return FeedOdds(self.event_id, market.market_id, self.t, tuple(changed))

    def set_status(
        self, markets: Sequence[_Market], status: MarketStatus, reason: str | None = None
    ) -> Iterator[FeedMarketStatus]:
        for market in markets:
            market.status = status
            yield FeedMarketStatus(self.event_id, market.market_id, self.t, status, reason)

    def settle(self, market: _Market, winner: str) -> FeedResult:
        """Settle a closed market: ``winner`` wins, every other selection loses."""
        market.status = "settled"
        results: tuple[tuple[str, SelectionStatus], ...] = tuple(
            (sid, "winner" if sid == winner else "loser") for sid in market.selection_ids
        )
        return FeedResult(self.event_id, market.market_id, self.t, results)

    def void(self, market: _Market, reason: str) -> FeedResult:
        market.status = "voided"
        return FeedResult(self.event_id, market.market_id, self.t, void=True, reason=reason)

    def live_markets(self) -> list[_Market]:
        return [m for m in self.markets if m.status in ("open", "suspended")]

    def quiet_ticks(self, until: int) -> Iterator[int]:
        """Advance ``t`` tick by tick while no ball is in play (before kick-off, at half
        time), yielding each tick's length in ms, and stop short of ``until``. These
        ticks are :data:`_QUIET_SLOWDOWN` times rarer than in-play ones."""
        rate = 1.0 / (self.interval_ms * _QUIET_SLOWDOWN)
        while True:
            dt = max(1, int(self.rng.expovariate(rate)))
            if self.t + dt >= until:
                return
            self.t += dt
            yield dt


# ---------------------------------------------------------------------------
# Football
# ---------------------------------------------------------------------------

_CS_SCORES = (
    (0, 0),
    (1, 0),
    (0, 1),
    (1, 1),
    (2, 0),
    (0, 2),
    (2, 1),
    (1, 2),
    (2, 2),
    (3, 0),
    (0, 3),
    (3, 1),
    (1, 3),
    (3, 2),
    (2, 3),
    (3, 3),
)
_CS_SELECTIONS = (*((f"{h}-{a}", f"{h}-{a}") for h, a in _CS_SCORES), ("other", "Any Other Score"))
# Extra goals considered per side; P(more than 10 in what is left of a match) is ~1e-7.
_MAX_EXTRA = 10
_HALF_MS = 2_700_000
# Stoppage time the model expects per half; the actual one is drawn per match.
_EXPECTED_STOPPAGE_S = (120.0, 240.0)
# The market's changing view of the teams (pressure, injuries, money) as log-strength
# noise per sqrt(second), pulled back to the prior within minutes: enough that a live
# price ticks about every other update, small enough that it does not wander far.
_LIVE_SIGMA = 0.004
_PRE_SIGMA = 0.0015
_REVERSION_PER_S = 1.0 / 300
_P_GOAL_REVIEW = 0.2
_P_OVERTURN = 0.35
# Stand-alone VAR reviews (a penalty or red-card check that changes nothing) per second.
_REVIEW_RATE = 0.6 / 5400


def _poisson(mu: float, at_least: int) -> list[float]:
    """P(0..n extra goals): at least 0..``at_least``, then on while the tail still
    matters, up to :data:`_MAX_EXTRA`."""
    p = math.exp(-mu)
    out = [p]
    i = 1
    while i <= at_least or (i <= _MAX_EXTRA and (i <= mu or p > 1e-7)):
        p *= mu / i
        out.append(p)
        i += 1
    return out


def football_probabilities(
    mu_home: float, mu_away: float, score: tuple[int, int]
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Outcome probabilities of the four football markets (1x2, over/under 2.5, correct
    score, next goal) from the expected goals left for each side and the current score.

    Every market is derived from the same two Poisson distributions, which is what keeps
    the prices of an event mutually consistent. Outcomes that can no longer happen get
    exactly 0.0; possible ones get a positive probability.
    """
    h, a = score
    d = a - h
    # Enough terms for every listed correct score (three more goals) and for the side
    # behind to come back: a long shot's price rests on the ratio of tiny
    # probabilities, so they must be computed, not cut off.
    ph = _poisson(mu_home, max(3, d + 1))
    pa = _poisson(mu_away, max(3, -d + 1))
    cdf_h = list(accumulate(ph))
    cdf_a = list(accumulate(pa))
    last_h = len(ph) - 1
    last_a = len(pa) - 1
    # With i and j more goals, home wins when i - j > d, draws when i - j == d. Each
    # outcome is summed on its own (no 1 - x), so the least likely keeps its precision.
    home = draw = away = 0.0
    for i, p in enumerate(ph):
        j = i - d
        if j > 0:
            home += p * cdf_a[j - 1 if j <= last_a else last_a]
        if 0 <= j <= last_a:
            draw += p * pa[j]
    for j, p in enumerate(pa):
        i = j + d
        if i > 0:
            away += p * cdf_h[i - 1 if i <= last_h else last_h]
    total = home + draw + away
    # Still possible, however unlikely: keep a price even if a product underflows.
    result = [max(1e-300, home / total), max(1e-300, draw / total), max(1e-300, away / total)]

    mu = mu_home + mu_away
    none = math.exp(-mu)
    total = h + a
    if total >= 3:
        over_under = [1.0, 0.0]
    else:
        # P(at most 2 - total more goals), the first terms of the Poisson series.
        under = none * (1.0, 1.0 + mu, 1.0 + mu + mu * mu / 2)[2 - total]
        over_under = [1.0 - under, under]

    # Both lists hold at least 0..3 extra goals, enough for every listed score.
    correct = [ph[x - h] * pa[y - a] if x >= h and y >= a else 0.0 for x, y in _CS_SCORES]
    # "Other" is certain once a side has four; until then it is never quite impossible.
    correct.append(1.0 if h > 3 or a > 3 else max(1e-12, 1.0 - sum(correct)))

    scored = 1.0 - none
    next_goal = [mu_home / mu * scored, none, mu_away / mu * scored]
    return result, over_under, correct, next_goal


class _Football(_Match):
    sport = "football"

    def __init__(self, setup: _Setup) -> None:
        super().__init__(setup)
        rng = self.rng
        # Goals per 90 minutes at full strength; home advantage is in the ranges.
        self.lam_home = rng.uniform(0.9, 2.2)
        self.lam_away = rng.uniform(0.6, 1.7)
        # Log-strength offsets: the market's changing view (pressure, injuries, money).
        self.n_home = 0.0
        self.n_away = 0.0
        self.clock_ms = 0
        self.period = "pre"
        self.goals = 0
        self.m1x2: _Market
        self.m_ou: _Market
        self.m_cs: _Market
        self.m_next: _Market

    # -- model ------------------------------------------------------------

    def drift(self, seconds: float, sigma: float) -> None:
        gauss = self.rng.gauss
        keep = 1.0 - _REVERSION_PER_S * seconds
        step = sigma * math.sqrt(seconds)
        self.n_home = self.n_home * keep + gauss(0.0, step)
        self.n_away = self.n_away * keep + gauss(0.0, step)

    def remaining_s(self) -> float:
        """Seconds of play the model expects to be left, stoppage included."""
        s1, s2 = _EXPECTED_STOPPAGE_S
        second_half = _HALF_MS / 1000 + s2
        clock = self.clock_ms / 1000
        if self.period == "1H":
            return max(_HALF_MS / 1000 + s1 - clock, 20.0) + second_half
        if self.period == "2H":
            return max(2 * _HALF_MS / 1000 + s2 - clock, 20.0)
        if self.period == "HT":
            return second_half
        return _HALF_MS / 1000 + s1 + second_half

    def probabilities(self) -> tuple[list[float], list[float], list[float], list[float]]:
        scale = self.remaining_s() / 5400.0
        return football_probabilities(
            self.lam_home * math.exp(self.n_home) * scale,
            self.lam_away * math.exp(self.n_away) * scale,
            self.score,
        )

    def quote(self, status: MarketStatus) -> Iterator[FeedOdds]:
        """Reprice the event's markets that are in ``status``."""
        p1x2, p_ou, p_cs, p_next = self.probabilities()
        for market, probs in (
            (self.m1x2, p1x2),
            (self.m_ou, p_ou),
            (self.m_cs, p_cs),
            (self.m_next, p_next),
        ):
            if market.status == status:
                odds = self.reprice(market, probs)
                if odds is not None:
                    yield odds

    def define_next_goal(self, probs: Sequence[float]) -> FeedMarket:
        n = self.goals + 1
        self.m_next, message = self.define(
            f"next_goal_{n}",
            f"Goal {n}: Next Team to Score",
            (("home", self.home), ("no_goal", "No Goal"), ("away", self.away)),
            probs,
        )
        return message

    # -- timeline ---------------------------------------------------------

    def advance(self, ms: int) -> None:
        self.t += ms
        if self.clock is not None and self.clock.running:
            self.clock_ms += ms

    def set_clock(self, period: str, running: bool) -> None:
        self.period = period
        self.clock = Clock(period, self.clock_ms // 1000, running)

    def run(self) -> Iterator[FeedMessage]:
        rng = self.rng
        yield self.event()
        p1x2, p_ou, p_cs, p_next = self.probabilities()
        self.m1x2, message = self.define(
            "1x2",
            "Match Result",
            (("home", self.home), ("draw", "Draw"), ("away", self.away)),
            p1x2,
            main=True,
        )
        yield message
        self.m_ou, message = self.define(
            "ou_2.5", "Over/Under 2.5 Goals", (("over", "Over 2.5"), ("under", "Under 2.5")), p_ou
        )
        yield message
        self.m_cs, message = self.define("correct_score", "Correct Score", _CS_SELECTIONS, p_cs)
        yield message
        yield self.define_next_goal(p_next)

        for dt in self.quiet_ticks(self.start_time):
            self.drift(dt / 1000, _PRE_SIGMA)
            yield from self.quote("open")

        self.t = self.start_time + rng.randrange(0, 30_000)
        self.phase = "live"
        self.set_clock("1H", running=True)
        yield self.event()
        yield from self.play_until(_HALF_MS + rng.randrange(30_000, 240_000))

        self.set_clock("HT", running=False)
        yield self.event()
        half_time_end = self.t + 900_000 + rng.randrange(0, 90_000)
        for dt in self.quiet_ticks(half_time_end):
            self.drift(dt / 1000, _PRE_SIGMA)
            yield from self.quote("open")

        self.t = half_time_end
        self.clock_ms = _HALF_MS
        self.set_clock("2H", running=True)
        yield self.event()
        yield from self.play_until(2 * _HALF_MS + rng.randrange(60_000, 420_000))
        yield from self.full_time()

    def play_until(self, end_ms: int) -> Iterator[FeedMessage]:
        """In-play ticks until the match clock reaches ``end_ms`` (the half's whistle)."""
        rng = self.rng
        rate = 1.0 / self.interval_ms
        while self.clock_ms < end_ms:
            dt = min(max(1, int(rng.expovariate(rate))), end_ms - self.clock_ms)
            self.advance(dt)
            seconds = dt / 1000
            self.drift(seconds, _LIVE_SIGMA)
            home_goal = self.lam_home * math.exp(self.n_home) / 5400.0 * seconds
            any_goal = home_goal + self.lam_away * math.exp(self.n_away) / 5400.0 * seconds
            u = rng.random()
            if u < any_goal:
                yield from self.goal(home=u < home_goal)
            elif u < any_goal + _REVIEW_RATE * seconds:
                yield from self.review()
            else:
                yield from self.quote("open")

    def goal(self, *, home: bool) -> Iterator[FeedMessage]:
        """A goal: suspend everything open, show the score, maybe review it, then settle
        what it decided and reopen the rest with new prices."""
        rng = self.rng
        before = self.score
        held = [m for m in self.markets if m.status == "open"]
        yield from self.set_status(held, "suspended", "goal")
        self.score = (before[0] + 1, before[1]) if home else (before[0], before[1] + 1)
        self.clock = Clock(self.period, self.clock_ms // 1000, True)
        yield self.event()
        stands = True
        if rng.random() < _P_GOAL_REVIEW:
            self.advance(rng.randrange(10_000, 30_000))
            yield from self.set_status(held, "suspended", "var")
            self.advance(rng.randrange(30_000, 120_000))
            if rng.random() < _P_OVERTURN:
                stands = False
                self.score = before
                self.clock = Clock(self.period, self.clock_ms // 1000, True)
                yield self.event()
        self.advance(rng.randrange(5_000, 20_000))
        if stands:
            # The goal decided the next-goal market; it may also have decided the
            # over/under and the correct score ("other" once a side has four).
            self.goals += 1
            decided = [(self.m_next, "home" if home else "away")]
            h, a = self.score
            if h + a == 3:
                decided.append((self.m_ou, "over"))
            if max(h, a) == 4:
                decided.append((self.m_cs, "other"))
            for market, winner in decided:
                if market.status == "suspended":
                    yield from self.set_status([market], "closed")
                    yield self.settle(market, winner)
        yield from self.quote("suspended")
        if stands:
            yield self.define_next_goal(self.probabilities()[3])
        yield from self.set_status([m for m in held if m.status == "suspended"], "open")

    def review(self) -> Iterator[FeedMessage]:
        """A VAR check that changes nothing: suspend, wait, reprice, reopen."""
        held = [m for m in self.markets if m.status == "open"]
        yield from self.set_status(held, "suspended", "var")
        self.advance(self.rng.randrange(30_000, 90_000))
        yield from self.quote("suspended")
        yield from self.set_status(held, "open")

    def full_time(self) -> Iterator[FeedMessage]:
        live = self.live_markets()
        yield from self.set_status(live, "closed")
        self.set_clock("FT", running=False)
        yield self.event()
        self.t += self.rng.randrange(20_000, 90_000)
        h, a = self.score
        winners = {
            self.m1x2.kind: "home" if h > a else "away" if a > h else "draw",
            self.m_ou.kind: "over" if h + a > 2 else "under",
            self.m_cs.kind: f"{h}-{a}" if h <= 3 and a <= 3 else "other",
            self.m_next.kind: "no_goal",
        }
        for market in live:
            yield self.settle(market, winners[market.kind])
        self.phase = "ended"
        yield self.event()


# ---------------------------------------------------------------------------
# Tennis
# ---------------------------------------------------------------------------


class TennisModel:
    """Win probabilities of a tennis match from each player's chance of winning a point
    on serve (``p_home``, ``p_away``), assuming points are independent.

    Tables are memoised per instance, so one instance serves a whole match for the
    price of a few hundred state evaluations.
    """

    def __init__(self, p_home: float, p_away: float, best_of: int) -> None:
        self.p_home = p_home
        self.p_away = p_away
        self.need = best_of // 2 + 1
        self._hold: dict[tuple[bool, int, int], float] = {}
        self._set: dict[tuple[int, int, bool], float] = {}
        self._tiebreak: dict[tuple[int, int, bool], float] = {}
        # Who serves first in a future set depends on how the current one ends; the
        # average of both cases is close enough for pricing.
        self.fresh_set = (self.set_from(0, 0, True) + self.set_from(0, 0, False)) / 2

    def hold(self, home_serving: bool, s: int, r: int) -> float:
        """P(the server wins the game) from ``s`` points (server) to ``r`` (receiver)."""
        key = (home_serving, s, r)
        cached = self._hold.get(key)
        if cached is not None:
            return cached
        p = self.p_home if home_serving else self.p_away
        if s >= 3 and r >= 3:
            deuce = p * p / (p * p + (1 - p) * (1 - p))
            value = deuce if s == r else p + (1 - p) * deuce if s > r else p * deuce
        elif s == 4:
            value = 1.0
        elif r == 4:
            value = 0.0
        else:
            value = p * self.hold(home_serving, s + 1, r) + (1 - p) * self.hold(
                home_serving, s, r + 1
            )
        self._hold[key] = value
        return value

    def tiebreak(self, a: int, b: int, home_first: bool) -> float:
        """P(home wins the tie-break) at ``a``-``b`` points, given who served its first
        point (then each serves two in turn)."""
        if a >= 7 and a - b >= 2:
            return 1.0
        if b >= 7 and b - a >= 2:
            return 0.0
        key = (a, b, home_first)
        cached = self._tiebreak.get(key)
        if cached is not None:
            return cached
        p_home, p_away = self.p_home, self.p_away
        if a >= 6 and a == b:
            # From level, each pair of points has one serve each; home needs both.
            both = p_home * (1 - p_away)
            neither = (1 - p_home) * p_away
            value = both / (both + neither)
        else:
            home_serves = home_first == (((a + b + 1) // 2) % 2 == 0)
            win = p_home if home_serves else 1 - p_away
            value = win * self.tiebreak(a + 1, b, home_first) + (1 - win) * self.tiebreak(
                a, b + 1, home_first
            )
        self._tiebreak[key] = value
        return value

    def set_from(self, ga: int, gb: int, home_serving: bool) -> float:
        """P(home wins the set) at ``ga``-``gb`` games, at the start of a game."""
        if ga == 7 or (ga >= 6 and ga - gb >= 2):
            return 1.0
        if gb == 7 or (gb >= 6 and gb - ga >= 2):
            return 0.0
        if ga == 6 and gb == 6:
            return self.tiebreak(0, 0, home_serving)
        key = (ga, gb, home_serving)
        cached = self._set.get(key)
        if cached is not None:
            return cached
        g = self.hold(home_serving, 0, 0)
        if home_serving:
            value = g * self.set_from(ga + 1, gb, False) + (1 - g) * self.set_from(
                ga, gb + 1, False
            )
        else:
            value = g * self.set_from(ga, gb + 1, True) + (1 - g) * self.set_from(ga + 1, gb, True)
        self._set[key] = value
        return value

    def current_set(self, state: _TennisState) -> float:
        """P(home wins the set in progress)."""
        if state.tiebreak:
            return self.tiebreak(state.points[0], state.points[1], state.tb_home_first)
        ga, gb = state.games
        pa, pb = state.points
        if state.home_serving:
            g = self.hold(True, pa, pb)
            return g * self.set_from(ga + 1, gb, False) + (1 - g) * self.set_from(ga, gb + 1, False)
        g = self.hold(False, pb, pa)
        return g * self.set_from(ga, gb + 1, True) + (1 - g) * self.set_from(ga + 1, gb, True)

    def final_sets(
        self, sets: tuple[int, int], current: float, fresh: float | None = None
    ) -> dict[tuple[int, int], float]:
        """Distribution of the final set score, given P(home wins the current set) and
        of each set after it (by default :attr:`fresh_set`)."""
        need = self.need
        later = self.fresh_set if fresh is None else fresh
        final: dict[tuple[int, int], float] = {}
        frontier = {sets: 1.0}
        p = current
        while frontier:
            following: dict[tuple[int, int], float] = {}
            for (x, y), w in frontier.items():
                for nxt, pw in (((x + 1, y), w * p), ((x, y + 1), w * (1 - p))):
                    into = final if need in nxt else following
                    into[nxt] = into.get(nxt, 0.0) + pw
            frontier = following
            p = later
        return final


class _TennisState:
    __slots__ = ("games", "home_serving", "points", "sets", "tb_home_first", "tiebreak")

    def __init__(self, home_serving: bool) -> None:
        self.sets = (0, 0)
        self.games = (0, 0)
        self.points = (0, 0)
        self.home_serving = home_serving
        self.tiebreak = False
        self.tb_home_first = home_serving


# A player retires hurt in about one match in forty.
_P_RETIREMENT = 0.025
# Pre-match drift per tick of the log-odds of the home player winning a set.
_TENNIS_PRE_SIGMA = 0.01


class _Tennis(_Match):
    sport = "tennis"

    def __init__(self, setup: _Setup, *, best_of: int, serve: tuple[float, float]) -> None:
        super().__init__(setup)
        self.best_of = best_of
        self.serve = serve
        need = best_of // 2 + 1
        self.set_scores = [(need, k) for k in range(need)] + [
            (k, need) for k in reversed(range(need))
        ]
        self.m_winner: _Market
        self.m_sets: _Market

    def probabilities(
        self, model: TennisModel, state: _TennisState | None, bias: float = 0.0
    ) -> tuple[list[float], list[float]]:
        """Match-winner and set-betting probabilities in play (``state``), or before
        the first point (``state`` None) with the market's ``bias`` towards home as a
        shift of each set's log-odds."""
        if state is None:
            p_set = 1.0 / (
                1.0 + math.exp(-(math.log(model.fresh_set / (1.0 - model.fresh_set)) + bias))
            )
            final = model.final_sets((0, 0), p_set, p_set)
        else:
            final = model.final_sets(state.sets, model.current_set(state))
        sets = [final.get(s, 0.0) for s in self.set_scores]
        half = len(sets) // 2
        return [sum(sets[:half]), sum(sets[half:])], sets

    def quote(
        self, model: TennisModel, state: _TennisState | None, bias: float = 0.0
    ) -> Iterator[FeedOdds]:
        p_winner, p_sets = self.probabilities(model, state, bias)
        for market, probs in ((self.m_winner, p_winner), (self.m_sets, p_sets)):
            if market.status == "open":
                odds = self.reprice(market, probs)
                if odds is not None:
                    yield odds

    def run(self) -> Iterator[FeedMessage]:
        rng = self.rng
        true_home, true_away = self.serve
        model = TennisModel(true_home, true_away, self.best_of)
        yield self.event()
        p_winner, p_sets = self.probabilities(model, None)
        self.m_winner, message = self.define(
            "match_winner",
            "Match Winner",
            (("home", self.home), ("away", self.away)),
            p_winner,
            main=True,
        )
        yield message
        self.m_sets, message = self.define(
            "set_betting",
            "Set Betting",
            [(f"{x}-{y}", f"{x}-{y}") for x, y in self.set_scores],
            p_sets,
            drop_impossible=True,
        )
        yield message

        # Pre-match money moves the market's view of each set, not the serve model:
        # one model per match keeps its memoised tables valid, and both markets still
        # derive from the one per-set probability.
        bias = 0.0
        for _ in self.quiet_ticks(self.start_time):
            bias = 0.97 * bias + rng.gauss(0.0, _TENNIS_PRE_SIGMA)
            yield from self.quote(model, None, bias)

        self.t = self.start_time + rng.randrange(0, 600_000)
        self.phase = "live"
        state = _TennisState(home_serving=rng.random() < 0.5)
        self.clock = Clock("set 1")
        yield self.event()
        retire_at = rng.randrange(10, 150) if rng.random() < _P_RETIREMENT else -1
        played = 0
        while True:
            self.t += rng.randrange(15_000, 40_000)
            played += 1
            if played == retire_at:
                yield from self.retirement(state)
                return
            serving_home = state.home_serving
            if state.tiebreak:
                a, b = state.points
                serving_home = state.tb_home_first == (((a + b + 1) // 2) % 2 == 0)
            server_wins = rng.random() < (true_home if serving_home else true_away)
            outcome = self.point(state, home=server_wins == serving_home)
            if outcome == "match":
                break
            if outcome == "set":
                self.score = state.sets
                self.clock = Clock(f"set {sum(state.sets) + 1}")
                yield self.event()
            yield from self.quote(model, state)
        yield from self.match_over(state)

    def point(self, state: _TennisState, *, home: bool) -> Literal["point", "set", "match"]:
        """Score one point (advancing simulated time past breaks); say whether it ended
        a set or the match."""
        a, b = state.points
        a, b = (a + 1, b) if home else (a, b + 1)
        state.points = (a, b)
        to_win = 7 if state.tiebreak else 4
        if max(a, b) < to_win or abs(a - b) < 2:
            return "point"
        ga, gb = state.games
        ga, gb = (ga + 1, gb) if home else (ga, gb + 1)
        state.points = (0, 0)
        self.t += self.rng.randrange(20_000, 60_000)
        if state.tiebreak:
            # The player who received first in the tie-break serves first next set.
            state.home_serving = not state.tb_home_first
            state.tiebreak = False
        else:
            state.home_serving = not state.home_serving
        if ga == 6 and gb == 6:
            state.games = (6, 6)
            state.tiebreak = True
            state.tb_home_first = state.home_serving
            return "point"
        if not (ga == 7 or gb == 7 or (max(ga, gb) >= 6 and abs(ga - gb) >= 2)):
            state.games = (ga, gb)
            return "point"
        sa, sb = state.sets
        state.sets = (sa + 1, sb) if ga > gb else (sa, sb + 1)
        state.games = (0, 0)
        need = self.best_of // 2 + 1
        if need in state.sets:
            return "match"
        self.t += self.rng.randrange(90_000, 180_000)
        return "set"

    def match_over(self, state: _TennisState) -> Iterator[FeedMessage]:
        live = self.live_markets()
        yield from self.set_status(live, "closed")
        self.score = state.sets
        yield self.event()
        self.t += self.rng.randrange(10_000, 60_000)
        yield self.settle(self.m_winner, "home" if state.sets[0] > state.sets[1] else "away")
        yield self.settle(self.m_sets, f"{state.sets[0]}-{state.sets[1]}")
        self.phase = "ended"
        yield self.event()

    def retirement(self, state: _TennisState) -> Iterator[FeedMessage]:
        """A player retires: markets close; the match winner stands (the opponent wins)
        once a set is complete, else it is void; set betting is void."""
        live = self.live_markets()
        yield from self.set_status(live, "suspended", "retirement")
        self.t += self.rng.randrange(30_000, 120_000)
        yield from self.set_status(live, "closed")
        self.t += self.rng.randrange(10_000, 60_000)
        if sum(state.sets) > 0:
            yield self.settle(self.m_winner, "away" if self.rng.random() < 0.5 else "home")
        else:
            yield self.void(self.m_winner, "retirement")
        yield self.void(self.m_sets, "retirement")
        self.phase = "ended"
        yield self.event()


# ---------------------------------------------------------------------------
# Rosters
# ---------------------------------------------------------------------------

_FOOTBALL: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Premier League",
        (
            "Arsenal",
            "Aston Villa",
            "Brighton",
            "Chelsea",
            "Crystal Palace",
            "Everton",
            "Liverpool",
            "Manchester City",
            "Manchester United",
            "Newcastle United",
            "Tottenham Hotspur",
            "West Ham United",
        ),
    ),
    (
        "La Liga",
        (
            "Athletic Club",
            "Atletico Madrid",
            "Barcelona",
            "Girona",
            "Real Betis",
            "Real Madrid",
            "Real Sociedad",
            "Sevilla",
            "Valencia",
            "Villarreal",
        ),
    ),
    (
        "Serie A",
        (
            "Atalanta",
            "Bologna",
            "Fiorentina",
            "Inter",
            "Juventus",
            "Lazio",
            "Milan",
            "Napoli",
            "Roma",
            "Torino",
        ),
    ),
    (
        "Bundesliga",
        (
            "Bayer Leverkusen",
            "Bayern Munich",
            "Borussia Dortmund",
            "Eintracht Frankfurt",
            "RB Leipzig",
            "SC Freiburg",
            "Union Berlin",
            "VfB Stuttgart",
            "Werder Bremen",
            "Wolfsburg",
        ),
    ),
    (
        "Ligue 1",
        ("Lens", "Lille", "Lyon", "Marseille", "Monaco", "Nice", "Paris Saint-Germain", "Rennes"),
    ),
)

# Invented players: realistic, but no real person's form is being priced.
_MEN = (
    "Lukas Brenner",
    "Mateo Ferrand",
    "Jonas Veltman",
    "Arturo Salcedo",
    "Kenji Morita",
    "Pavel Hrubec",
    "Elias Lindqvist",
    "Tomas Ribeiro",
    "Nikolai Orlov",
    "Felix Aubert",
    "Dario Castellan",
    "Henrik Solberg",
    "Marco Bellandi",
    "Sebastian Kral",
)
_WOMEN = (
    "Elena Petrova",
    "Sofia Marquez",
    "Hanna Lindgren",
    "Mia Kowalski",
    "Chloe Durand",
    "Ana Ribeiro",
    "Yuki Tanaka",
    "Greta Holm",
    "Laura Bianchi",
    "Nina Horvat",
    "Clara Weiss",
    "Isabel Moreno",
)
# (competition, players, sets to play, range of serve-point win probability)
_TENNIS: tuple[tuple[str, tuple[str, ...], int, tuple[float, float]], ...] = (
    ("ATP Rotterdam", _MEN, 3, (0.60, 0.70)),
    ("ATP Dubai", _MEN, 3, (0.60, 0.70)),
    ("Australian Open Men's Singles", _MEN, 5, (0.60, 0.70)),
    ("WTA Doha", _WOMEN, 3, (0.52, 0.62)),
    ("Australian Open Women's Singles", _WOMEN, 3, (0.52, 0.62)),
)


def _pick_pair(rng: random.Random, pool: Sequence[str], busy: Counter[str]) -> tuple[str, str]:
    """Two participants not already playing, when the pool allows; with more concurrent
    events than names, some play twice at once rather than the generator failing."""
    free = [name for name in pool if not busy[name]]
    home, away = rng.sample(free if len(free) >= 2 else list(pool), 2)
    return home, away


# ---------------------------------------------------------------------------
# The match day
# ---------------------------------------------------------------------------


class MatchDay:
    """An endless, deterministic match day of ``events`` concurrent matches.

    Iterating yields :data:`feeds.model.FeedMessage` values with non-decreasing ``ts``
    (simulated epoch milliseconds from ``start_ms``). Each iteration restarts the same
    simulation: equal arguments give an identical stream, a different ``seed`` a
    different one. Nothing is read from the wall clock or the environment.

    ``events`` is the number of matches scheduled or running at any time: when one ends,
    a new one is announced in its slot (same sport) shortly after, so the stream never
    ends; bound it with :func:`itertools.islice` or a ``ts`` cut-off. Slots take
    ``sports`` in turn. ``odds_interval_ms`` is the mean simulated time between price
    ticks of a live football match (pre-match and at half-time ticks are ten times
    rarer; tennis prices move on each point).

    Per event, in order: a ``FeedEvent`` (phase ``pre``, ``start_time`` in the near
    future), its ``FeedMarket`` definitions, pre-match ``FeedOdds``, kick-off (phase
    ``live``), in-play odds and suspensions, then the end: a ``closed``
    ``FeedMarketStatus`` for every live market, a ``FeedResult`` for each (every
    selection ``winner`` or ``loser``, or the whole market void), and a last ``FeedEvent``
    with phase ``ended``. A market is always defined before any other message names it,
    gets nothing after its ``FeedResult``, and may be closed and settled early once its
    outcome is certain (over 2.5 after a third goal, each next-goal market).

    A ``FeedOdds`` lists only the selections whose price changed, and is not sent when
    none did. Prices are on a ladder from 1.01 to 1000.00 with two decimal places. A
    ``FeedPrice`` with no price means the outcome can no longer happen for now (it
    clears the price; in football a VAR decision can restore it); tennis set-betting
    outcomes that can no longer happen are ``removed`` instead.

    Raises :class:`ValueError` for an unknown sport or a non-positive count or interval.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        events: int = 12,
        start_ms: int = 1_767_225_600_000,
        sports: tuple[str, ...] = SPORTS,
        odds_interval_ms: int = 2_000,
    ) -> None:
        if events < 1:
            raise ValueError(f"events must be at least 1, not {events}")
        if odds_interval_ms < 1:
            raise ValueError(f"odds_interval_ms must be at least 1, not {odds_interval_ms}")
        if not sports:
            raise ValueError("sports must name at least one sport")
        unknown = [s for s in sports if s not in SPORTS]
        if unknown:
            raise ValueError(f"unknown sport(s) {unknown}; known: {list(SPORTS)}")
        self.seed = seed
        self.events = events
        self.start_ms = start_ms
        self.sports = sports
        self.odds_interval_ms = odds_interval_ms

    def __iter__(self) -> Iterator[FeedMessage]:
        return _Schedule(self).messages()


# The first batch of events kicks off within this long of ``start_ms``.
_WARM_UP_MS = 2 * 3_600_000


class _Schedule:
    """Runs the matches of one iteration and merges their messages by ``ts``."""

    def __init__(self, day: MatchDay) -> None:
        self.day = day
        self.rng = random.Random(day.seed)
        self.busy: Counter[str] = Counter()
        self.created = 0

    def new_match(self, sport: str, announce_ts: int, start_time: int) -> _Match:
        rng = self.rng
        self.created += 1
        # Each match draws from its own generator, so its course does not depend on how
        # its messages interleave with the others'.
        match_rng = random.Random(rng.getrandbits(64))
        best_of, serve = 0, (0.0, 0.0)
        if sport == "football":
            prefix = "fb"
            competition, names = rng.choice(_FOOTBALL)
        else:
            prefix = "tn"
            competition, names, best_of, (low, high) = rng.choice(_TENNIS)
            serve = (rng.uniform(low, high), rng.uniform(low, high))
        home, away = _pick_pair(rng, names, self.busy)
        self.busy[home] += 1
        self.busy[away] += 1
        setup = _Setup(
            match_rng,
            f"{prefix}-{self.created:04d}",
            competition,
            home,
            away,
            announce_ts,
            start_time,
            self.day.odds_interval_ms,
        )
        if sport == "football":
            return _Football(setup)
        return _Tennis(setup, best_of=best_of, serve=serve)

    def messages(self) -> Iterator[FeedMessage]:
        rng = self.rng
        start = self.day.start_ms
        sports = self.day.sports
        # Heap entries: (ts, insertion order, message, its match's stream, match, slot).
        # The insertion order breaks ts ties deterministically and keeps each match's
        # own messages in the order it produced them.
        heap: list[tuple[int, int, FeedMessage, Iterator[FeedMessage], _Match, int]] = []
        # The first batch is announced at once and kicks off staggered over the first
        # two hours, however many events there are, so the day warms up quickly
        # rather than starting in unison.
        spread = _WARM_UP_MS // self.day.events
        for slot in range(self.day.events):
            kickoff = start + 300_000 + slot * spread + rng.randrange(max(1, spread))
            match = self.new_match(sports[slot % len(sports)], start, kickoff)
            stream = match.run()
            first = next(stream)
            heap.append((first.ts, slot, first, stream, match, slot))
        heapify(heap)
        order = len(heap)
        while True:
            _, _, message, stream, match, slot = heap[0]
            yield message
            following = next(stream, None)
            if following is None:
                self.busy[match.home] -= 1
                self.busy[match.away] -= 1
                announce = message.ts + rng.randrange(10_000, 120_000)
                # Kick-offs on the quarter hour, 15 to 45 minutes ahead, as listed.
                start_time = (announce // 900_000 + rng.randrange(2, 4)) * 900_000
                match = self.new_match(sports[slot % len(sports)], announce, start_time)
                stream = match.run()
                following = next(stream)
            order += 1
            heapreplace(heap, (following.ts, order, following, stream, match, slot))
