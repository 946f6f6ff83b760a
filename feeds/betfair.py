"""Betfair Exchange Stream API market changes in, neutral feed messages out.

:class:`BetfairAdapter` is sans-I/O and stateful: it keeps the market cache a Betfair
stream client must keep (definitions, runners, price ladders), merges each ``op: "mcm"``
record into it and translates the result into :mod:`feeds.model` messages. A full image
(``img``, or every market of a ``ct: "SUB_IMAGE"`` record) replaces a market's cache and
is sent on as a market redefinition carrying every runner's full state; any other change
merges, and price changes go out as :class:`~feeds.model.FeedOdds` for the runners they
touched. :func:`read_betfair` reads a recording (JSON lines, optionally ``.bz2``).

The field-by-field mapping, and what is deliberately left out, is in ``docs/feeds.md``.
Every timestamp is the record's publish time ``pt``.
"""

from __future__ import annotations

import bz2
import logging
from bisect import bisect_left, insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import IO, Final

import msgspec

from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedResult,
    FeedSelection,
)
from feeds.replay import ReadReport, Translation, reported
from protocol import EventPhase, MarketStatus, SelectionStatus
from protocol.types import LADDER_DEPTH, Level

__all__ = [
    "SPORTS",
    "BetfairAdapter",
    "BetfairError",
    "BetfairStats",
    "Translation",
    "read_betfair",
]

log = logging.getLogger(__name__)

#: Betfair event type id -> our ``sport``. Others become ``betfair_<id>``.
SPORTS: Final[dict[str, str]] = {
    "1": "football",
    "2": "tennis",
    "4": "cricket",
    "7": "horse_racing",
    "4339": "greyhounds",
}

#: Market types shown in a sport's lobby (``main``).
MAIN_MARKET_TYPES: Final = frozenset({"MATCH_ODDS", "WIN"})

_MARKET_STATUS: Final[dict[str, tuple[MarketStatus, str | None]]] = {
    "OPEN": ("open", None),
    "SUSPENDED": ("suspended", None),
    "INACTIVE": ("suspended", "inactive"),
    "CLOSED": ("closed", None),
}
_REMOVED: Final = frozenset({"REMOVED", "REMOVED_VACANT", "HIDDEN"})
_RESULTS: Final[dict[str, SelectionStatus]] = {
    "WINNER": "winner",
    "PLACED": "winner",  # Placed in a place (or each-way) market: the bet wins.
    "LOSER": "loser",
}
_KNOWN_OPS: Final = frozenset({"connection", "status", "ocm"})
_PHASE_ORDER: Final[dict[EventPhase, int]] = {"pre": 0, "live": 1, "ended": 2}

# ---------------------------------------------------------------------------
# The wire form, decoded once per record. Unknown keys are ignored; numbers that are
# prices or sizes decode straight from their JSON text into exact Decimals.
# ---------------------------------------------------------------------------

_PV = tuple[Decimal, Decimal]
_LPV = tuple[int, Decimal, Decimal]


class _RunnerDefinition(msgspec.Struct, frozen=True):
    id: int
    status: str = "ACTIVE"
    hc: Decimal | None = None
    name: str | None = None
    sort_priority: int = msgspec.field(default=0, name="sortPriority")
    adjustment_factor: Decimal | None = msgspec.field(default=None, name="adjustmentFactor")
    removal_date: str | None = msgspec.field(default=None, name="removalDate")
    bsp: Decimal | None = None


class _MarketDefinition(msgspec.Struct, frozen=True):
    status: str = "OPEN"
    in_play: bool = msgspec.field(default=False, name="inPlay")
    event_id: str | None = msgspec.field(default=None, name="eventId")
    event_type_id: str | None = msgspec.field(default=None, name="eventTypeId")
    event_name: str | None = msgspec.field(default=None, name="eventName")
    market_type: str = msgspec.field(default="", name="marketType")
    name: str | None = None
    venue: str | None = None
    open_date: str | None = msgspec.field(default=None, name="openDate")
    market_time: str | None = msgspec.field(default=None, name="marketTime")
    runners: tuple[_RunnerDefinition, ...] = ()


class _RunnerChange(msgspec.Struct, frozen=True):
    id: int
    hc: Decimal | None = None
    atb: list[_PV] | None = None
    atl: list[_PV] | None = None
    batb: list[_LPV] | None = None
    batl: list[_LPV] | None = None
    bdatb: list[_LPV] | None = None
    bdatl: list[_LPV] | None = None
    trd: list[_PV] | None = None
    ltp: Decimal | None = None
    tv: Decimal | None = None


class _MarketChange(msgspec.Struct, frozen=True):
    id: str
    img: bool = False
    con: bool = False
    tv: Decimal | None = None
    definition: _MarketDefinition | None = msgspec.field(default=None, name="marketDefinition")
    rc: tuple[_RunnerChange, ...] = ()


class _Record(msgspec.Struct, frozen=True):
    op: str
    pt: int | None = None
    ct: str | None = None
    clk: str | None = None
    initial_clk: str | None = msgspec.field(default=None, name="initialClk")
    mc: tuple[_MarketChange, ...] = ()


_decoder: Final = msgspec.json.Decoder(_Record)

# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------

#: Ladder families by preference: "display" (``bdatb``/``bdatl``, virtual bets included,
#: what Betfair's own site shows), "best" (``batb``/``batl``), "full" (``atb``/``atl``).
_FAMILIES: Final = ("display", "best", "full")
_FAMILY_OF: Final[dict[str, str]] = {
    "bdatb": "display",
    "bdatl": "display",
    "batb": "best",
    "batl": "best",
    "atb": "full",
    "atl": "full",
}


class _PriceLadder:
    """A full-depth ladder (price -> size) that keeps its prices sorted as it changes,
    so its best levels are a slice: a change costs a bisection, never a sort of the
    hundred-odd prices a busy runner carries."""

    __slots__ = ("prices", "sizes")

    def __init__(self) -> None:
        self.sizes: dict[Decimal, Decimal] = {}
        self.prices: list[Decimal] = []  # Ascending, the keys of ``sizes``.

    def merge(self, changes: list[_PV]) -> None:
        sizes = self.sizes
        for price, size in changes:
            if size:
                if price not in sizes:
                    insort(self.prices, price)
                sizes[price] = size
            elif sizes.pop(price, None) is not None:  # Size 0: the level is gone.
                del self.prices[bisect_left(self.prices, price)]

    def clear(self) -> None:
        self.sizes.clear()
        self.prices.clear()

    def highest(self) -> tuple[Level, ...]:
        """The best back levels: highest price first."""
        sizes = self.sizes
        return tuple((p, sizes[p]) for p in reversed(self.prices[-LADDER_DEPTH:]))

    def lowest(self) -> tuple[Level, ...]:
        """The best lay levels: lowest price first."""
        sizes = self.sizes
        return tuple((p, sizes[p]) for p in self.prices[:LADDER_DEPTH])


@dataclass(slots=True)
class _Runner:
    selection_id: str
    definition: _RunnerDefinition
    full_back: _PriceLadder = field(default_factory=_PriceLadder)
    full_lay: _PriceLadder = field(default_factory=_PriceLadder)
    best_back: dict[int, _PV] = field(default_factory=dict)
    best_lay: dict[int, _PV] = field(default_factory=dict)
    display_back: dict[int, _PV] = field(default_factory=dict)
    display_lay: dict[int, _PV] = field(default_factory=dict)
    traded: dict[Decimal, Decimal] = field(default_factory=dict)
    ltp: Decimal | None = None
    tv: Decimal | None = None

    def clear_prices(self) -> None:
        for ladder in (
            self.full_back,
            self.full_lay,
            self.best_back,
            self.best_lay,
            self.display_back,
            self.display_lay,
            self.traded,
        ):
            ladder.clear()
        self.ltp = self.tv = None

    def merge(self, rc: _RunnerChange) -> set[str]:
        """Merge one runner change; return the ladder keys it carried."""
        seen: set[str] = set()
        if rc.atb is not None:
            self.full_back.merge(rc.atb)
            seen.add("atb")
        if rc.atl is not None:
            self.full_lay.merge(rc.atl)
            seen.add("atl")
        if rc.batb is not None:
            _merge_levels(self.best_back, rc.batb)
            seen.add("batb")
        if rc.batl is not None:
            _merge_levels(self.best_lay, rc.batl)
            seen.add("batl")
        if rc.bdatb is not None:
            _merge_levels(self.display_back, rc.bdatb)
            seen.add("bdatb")
        if rc.bdatl is not None:
            _merge_levels(self.display_lay, rc.bdatl)
            seen.add("bdatl")
        if rc.trd is not None:
            _merge_prices(self.traded, rc.trd)
        if rc.ltp is not None:
            self.ltp = rc.ltp or None  # 0: nothing traded yet (sent in images).
        if rc.tv is not None:
            self.tv = rc.tv
        return seen

    @property
    def removed(self) -> bool:
        return self.definition.status in _REMOVED

    def levels(self, family: str | None) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """(back, lay): the best :data:`LADDER_DEPTH` levels of each side, best first."""
        if self.removed:
            return (), ()
        if family == "display":
            return _by_level(self.display_back), _by_level(self.display_lay)
        if family == "best":
            return _by_level(self.best_back), _by_level(self.best_lay)
        if family == "full":
            return self.full_back.highest(), self.full_lay.lowest()
        return (), ()

    @property
    def volume(self) -> Decimal | None:
        """Traded volume: ``tv`` when the stream gives it, else the traded ladder's sum."""
        if self.tv is not None:
            return self.tv
        return sum(self.traded.values(), Decimal(0)) if self.traded else None


def _merge_prices(ladder: dict[Decimal, Decimal], changes: list[_PV]) -> None:
    for price, size in changes:
        if size:
            ladder[price] = size
        else:
            ladder.pop(price, None)  # Size 0: the level is gone.


def _merge_levels(ladder: dict[int, _PV], changes: list[_LPV]) -> None:
    for level, price, size in changes:
        if size:
            ladder[level] = (price, size)
        else:
            ladder.pop(level, None)


def _by_level(ladder: dict[int, _PV]) -> tuple[Level, ...]:
    return tuple(ladder[level] for level in sorted(ladder)[:LADDER_DEPTH])


@dataclass(slots=True)
class _Market:
    market_id: str
    definition: _MarketDefinition | None = None
    runners: dict[tuple[int, Decimal], _Runner] = field(default_factory=dict)
    volume: Decimal | None = None
    family: str | None = None
    # What the books were told: None until the first definition went out.
    sent_status: MarketStatus | None = None
    settled: bool = False

    def clear_prices(self) -> None:
        for runner in self.runners.values():
            runner.clear_prices()
        self.volume = None

    def define(self, definition: _MarketDefinition) -> None:
        """Replace the definition; runners keep their prices, new ones are added."""
        self.definition = definition
        runners: dict[tuple[int, Decimal], _Runner] = {}
        for rd in sorted(definition.runners, key=lambda r: r.sort_priority):
            key = _runner_key(rd.id, rd.hc)
            known = self.runners.get(key)
            if known is None:
                runners[key] = _Runner(_selection_id(rd.id, rd.hc), rd)
            else:
                known.definition = rd
                runners[key] = known
        # Runners missing from a definition are kept: a definition lists every runner,
        # and dropping one would silently lose what the books show for it.
        for key, runner in self.runners.items():
            runners.setdefault(key, runner)
        self.runners = runners

    def note_family(self, keys: set[str]) -> None:
        for key in keys:
            family = _FAMILY_OF[key]
            if self.family is None or _FAMILIES.index(family) < _FAMILIES.index(self.family):
                self.family = family


def _runner_key(runner_id: int, hc: Decimal | None) -> tuple[int, Decimal]:
    return runner_id, hc if hc is not None else Decimal(0)


def _selection_id(runner_id: int, hc: Decimal | None) -> str:
    return str(runner_id) if not hc else f"{runner_id}:{hc}"


# ---------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------


class BetfairError(ValueError):
    """A record that cannot be read at all (not JSON, not a stream message, no ``pt``).
    Nothing of it was applied to the cache."""


@dataclass(slots=True)
class BetfairStats:
    """Counters of what the adapter saw that produces no message of its own."""

    records: int = 0
    heartbeats: int = 0
    images: int = 0
    conflated: int = 0
    other_ops: int = 0
    after_close: int = 0


@dataclass(slots=True)
class _EventInfo:
    message: FeedEvent | None = None
    markets: dict[str, bool] = field(default_factory=dict)  # market_id -> closed


class BetfairAdapter:
    """Translates Betfair Exchange Stream API records, one at a time, in stream order.

    Call :meth:`translate` with each raw record (a JSON line). It raises
    :class:`BetfairError` for a record that cannot be read and otherwise returns a
    :class:`Translation`. ``clk`` and ``initial_clk`` keep the stream position Betfair
    would need to resubscribe; ``stats`` counts heartbeats, images, conflated changes.
    """

    def __init__(self) -> None:
        self._markets: dict[str, _Market] = {}
        self._events: dict[str, _EventInfo] = {}
        self.clk: str | None = None
        self.initial_clk: str | None = None
        self.stats = BetfairStats()

    def translate(self, raw: bytes | str) -> Translation:
        try:
            record = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise BetfairError(f"not a Betfair stream message: {exc}") from None
        self.stats.records += 1
        if record.op != "mcm":
            if record.op in _KNOWN_OPS:
                self.stats.other_ops += 1
                return Translation([], [])
            raise BetfairError(f"unknown op {record.op!r}")
        if record.clk is not None:
            self.clk = record.clk
        if record.initial_clk is not None:
            self.initial_clk = record.initial_clk
        if record.ct == "HEARTBEAT":
            self.stats.heartbeats += 1  # Liveness only: nothing changed.
            return Translation([], [])
        if record.pt is None:
            raise BetfairError("market change without a publish time (pt)")
        messages: list[FeedMessage] = []
        problems: list[str] = []
        for mc in record.mc:
            self._market_change(mc, record.pt, record.ct == "SUB_IMAGE", messages, problems)
        return Translation(messages, problems)

    def _market_change(
        self,
        mc: _MarketChange,
        ts: int,
        sub_image: bool,
        out: list[FeedMessage],
        problems: list[str],
    ) -> None:
        image = mc.img or sub_image
        market = self._markets.get(mc.id)
        if market is None:
            market = _Market(mc.id)
        if mc.definition is None and market.definition is None:
            problems.append(f"market {mc.id}: change before its market definition")
            return
        self._markets[mc.id] = market
        if mc.con:
            self.stats.conflated += 1
        if image:
            self.stats.images += 1
            market.clear_prices()
        if mc.definition is not None:
            market.define(mc.definition)
        # A runner may appear more than once in one change (conflation): merge each in
        # order, send it once.
        touched: dict[str, _Runner] = {}
        for rc in mc.rc:
            runner = market.runners.get(_runner_key(rc.id, rc.hc))
            if runner is None:
                problems.append(f"market {mc.id}: runner {rc.id} is not in its definition")
                continue
            market.note_family(runner.merge(rc))
            touched[runner.selection_id] = runner
        if mc.tv is not None:
            market.volume = mc.tv
        if market.settled or (market.sent_status == "closed" and mc.definition is None):
            self.stats.after_close += 1  # The books froze the market: nothing to send.
            return
        if image or mc.definition is not None:
            self._definition(market, ts, out)
        elif touched or mc.tv is not None:
            out.append(
                FeedOdds(
                    _event_id(market),
                    market.market_id,
                    ts,
                    tuple(_price(runner, market.family) for runner in touched.values()),
                    volume=market.volume if mc.tv is not None else msgspec.UNSET,
                )
            )

    def _definition(self, market: _Market, ts: int, out: list[FeedMessage]) -> None:
        definition = market.definition
        assert definition is not None
        event_id = _event_id(market)
        status, reason = _MARKET_STATUS.get(definition.status, ("suspended", "unknown_status"))
        closed = status == "closed"
        event = self._event(market, event_id, ts, closed)
        if event is not None:
            out.append(event)
        if market.sent_status != "closed":
            out.append(
                FeedMarket(
                    event_id=event_id,
                    market_id=market.market_id,
                    ts=ts,
                    sport=_sport(definition),
                    market_kind=definition.market_type.lower() or "unknown",
                    name=definition.name or _title(definition.market_type) or market.market_id,
                    selections=tuple(_selection(r, market.family) for r in market.runners.values()),
                    status=status,
                    main=definition.market_type in MAIN_MARKET_TYPES,
                    reason=reason,
                    volume=market.volume,
                )
            )
            market.sent_status = status
        if not closed:
            return
        results = tuple(
            (runner.selection_id, _RESULTS[runner.definition.status])
            for runner in market.runners.values()
            if runner.definition.status in _RESULTS
        )
        if results:
            # Settlement at the final definition: closed (above), then the result.
            out.append(FeedResult(event_id, market.market_id, ts, results))
            market.settled = True

    def _event(self, market: _Market, event_id: str, ts: int, closed: bool) -> FeedEvent | None:
        """The event's new state if this definition changed it (phase, names...)."""
        definition = market.definition
        assert definition is not None
        info = self._events.setdefault(event_id, _EventInfo())
        info.markets[market.market_id] = closed
        phase: EventPhase = "live" if definition.in_play else "pre"
        if all(info.markets.values()):
            phase = "ended"
        previous = info.message
        if previous is not None and _PHASE_ORDER[previous.phase] > _PHASE_ORDER[phase]:
            phase = previous.phase  # A match does not go back in time.
        home, away = _participants(definition, event_id)
        event = FeedEvent(
            event_id=event_id,
            ts=ts,
            sport=_sport(definition),
            competition=definition.venue or "",
            home=home,
            away=away,
            start_time=_epoch_ms(definition.open_date or definition.market_time),
            phase=phase,
        )
        if previous is not None and msgspec.structs.replace(previous, ts=ts) == event:
            return None
        info.message = event
        return event


def _event_id(market: _Market) -> str:
    definition = market.definition
    assert definition is not None
    return definition.event_id or market.market_id


def _sport(definition: _MarketDefinition) -> str:
    type_id = definition.event_type_id or "unknown"
    return SPORTS.get(type_id, f"betfair_{type_id}")


def _title(market_type: str) -> str:
    return market_type.replace("_", " ").title()


def _participants(definition: _MarketDefinition, event_id: str) -> tuple[str, str]:
    name = definition.event_name or definition.venue or f"Event {event_id}"
    home, sep, away = name.partition(" v ")
    return (home, away) if sep and home and away else (name, "")


@lru_cache(maxsize=256)
def _epoch_ms(iso: str | None) -> int:
    """Milliseconds since the epoch of an ISO 8601 time; 0 when absent or unreadable."""
    if not iso:
        return 0
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Betfair times are UTC.
    return int(moment.timestamp() * 1000)


def _selection(runner: _Runner, family: str | None) -> FeedSelection:
    rd = runner.definition
    back, lay = runner.levels(family)
    return FeedSelection(
        runner.selection_id,
        rd.name or runner.selection_id,
        price=back[0][0] if back else None,
        status="removed" if runner.removed else "active",
        back=back,
        lay=lay,
        ltp=runner.ltp,
        volume=runner.volume,
        bsp=rd.bsp,
        adjustment=rd.adjustment_factor,
        removed_at=_epoch_ms(rd.removal_date) or None,
    )


def _price(runner: _Runner, family: str | None) -> FeedPrice:
    back, lay = runner.levels(family)
    return FeedPrice(
        runner.selection_id,
        back[0][0] if back else None,
        back=back,
        lay=lay,
        ltp=runner.ltp,
        volume=runner.volume,
    )


# ---------------------------------------------------------------------------
# Reading a recording
# ---------------------------------------------------------------------------


def read_betfair(path: Path, report: ReadReport) -> Iterator[FeedMessage]:
    """Feed messages of a Betfair stream recording: one JSON record per line, plain or
    ``.bz2``-compressed. A line that cannot be read, or the part of a line that cannot
    be applied, is reported with its line number and skipped; a truncated compressed
    file ends the replay at the damage, reported likewise."""
    adapter = BetfairAdapter()
    with _open(path) as lines:
        line_no = 0
        while True:
            try:
                line = lines.readline()
            except (OSError, EOFError) as exc:
                report.skip(line_no + 1, f"unreadable from here on: {exc}")
                break
            if not line:
                break
            line_no += 1
            if not line.strip():
                continue
            try:
                translation = adapter.translate(line)
            except BetfairError as exc:
                report.skip(line_no, str(exc))
                continue
            yield from reported(report, line_no, translation)
    log.debug("betfair %s: %s", path, adapter.stats)


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return path.open("rb")
