"""Sportradar Unified Odds Feed (UOF) XML messages in, neutral feed messages out.

:class:`UofAdapter` is sans-I/O and stateful: it remembers, per market, the outcomes it
has seen and what it last told the books (open, suspended, settled, voided), so that a
message is translated into exactly the transitions the books accept: ``odds_change``
into definitions, prices and statuses; ``bet_stop`` into suspensions; ``bet_settlement``
and ``bet_cancel`` into results; ``rollback_bet_settlement`` and ``rollback_bet_cancel``
into rollbacks (:class:`~feeds.model.FeedResult` with ``rollback``). :func:`read_uof`
reads one message per file, or a directory of them in file-name order.

The input is untrusted XML: it is parsed by expat with every DTD refused (so no entity,
internal or external, can be declared or expanded) and a size limit. The mapping, and
what is deliberately left out, is in ``docs/feeds.md``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final, NamedTuple
from xml.parsers import expat

import msgspec

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
from feeds.replay import ReadReport, Translation, reported
from protocol import Clock, EventPhase, MarketStatus, SelectionStatus

__all__ = ["MAX_MESSAGE_BYTES", "Translation", "UofAdapter", "UofError", "UofStats", "read_uof"]

log = logging.getLogger(__name__)

#: Largest message accepted, in bytes (real ones are a few kilobytes).
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

#: UOF market status -> (our status, reason). -3 (settled) and -4 (cancelled) repeat
#: what a bet_settlement / bet_cancel already said, so they change nothing here.
_MARKET_STATUS: Final[dict[int, tuple[MarketStatus, str | None]]] = {
    1: ("open", None),
    0: ("suspended", "inactive"),
    -1: ("suspended", "bet_stop"),
    -2: ("suspended", "handed_over"),
}
_ALREADY_FINAL: Final = frozenset({-3, -4})

#: sport_event_status/@status -> phase.
_PHASES: Final[dict[int, EventPhase]] = {
    0: "pre",  # not started
    1: "live",
    2: "live",  # suspended
    3: "ended",
    4: "ended",  # closed
    5: "ended",  # cancelled
    6: "pre",  # delayed
    7: "live",  # interrupted
    8: "pre",  # postponed
    9: "ended",  # abandoned
}
_PHASE_ORDER: Final[dict[EventPhase, int]] = {"pre": 0, "live": 1, "ended": 2}
#: Soccer match_status codes with a conventional period name; others show as "ms<code>".
_PERIODS: Final[dict[int, str]] = {6: "1H", 7: "2H", 31: "HT", 100: "FT"}

_SILENT: Final = frozenset({"alive", "snapshot_complete", "fixture_change", "product_down"})
_MIN_PRICE: Final = Decimal("1.01")
_ONE: Final = Decimal(1)


class UofError(ValueError):
    """A message that cannot be read at all (not XML, refused XML, unknown message,
    missing ``event_id`` or ``timestamp``). Nothing of it was applied."""


class _Message(NamedTuple):
    """One message being translated: its root element, event and timestamp, and where
    its feed messages and problems go."""

    root: ET.Element
    event_id: str
    ts: int
    out: list[FeedMessage]
    problems: list[str]


@dataclass(slots=True)
class UofStats:
    """Counters of what the adapter saw that produces no message of its own."""

    messages: int = 0
    silent: int = 0
    partial_cancels: int = 0
    unchanged: int = 0


@dataclass(slots=True)
class _Market:
    market_id: str
    event_id: str
    outcomes: dict[str, Decimal | None] = field(default_factory=dict)
    status: MarketStatus = "open"
    reason: str | None = None
    results: tuple[tuple[str, SelectionStatus], ...] = ()
    factors: tuple[tuple[tuple[str, Decimal], ...], tuple[tuple[str, Decimal], ...]] = ((), ())
    product: str | None = None
    groups: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Settlement:
    results: tuple[tuple[str, SelectionStatus], ...]
    dead_heat: tuple[tuple[str, Decimal], ...]
    void_factors: tuple[tuple[str, Decimal], ...]


class UofAdapter:
    """Translates UOF messages, one at a time, in feed order.

    ``sport`` names the sport of every event (UOF messages do not carry it; it comes
    from the fixture API). ``market_groups`` maps a UOF market type id to the groups it
    belongs to (from the market descriptions API), so that a ``bet_stop`` naming groups
    suspends only those; a market whose groups are unknown is suspended by any
    ``bet_stop`` of its event, since a needless suspension is safe and a missed one is
    not.
    """

    def __init__(
        self, *, sport: str = "unknown", market_groups: Mapping[str, frozenset[str]] | None = None
    ):
        self._sport = sport
        self._groups = dict(market_groups or {})
        self._markets: dict[str, _Market] = {}
        self._events: dict[str, FeedEvent] = {}
        self.stats = UofStats()

    def translate(self, raw: bytes) -> Translation:
        root = parse(raw)
        event_id = root.get("event_id")
        timestamp = root.get("timestamp")
        if root.tag in _SILENT:
            self.stats.silent += 1
            return Translation([], [])
        handler = self._HANDLERS.get(root.tag)
        if handler is None:
            raise UofError(f"unknown message <{root.tag}>")
        if not event_id:
            raise UofError(f"<{root.tag}> without event_id")
        ts = _int(timestamp)
        if ts is None:
            raise UofError(f"<{root.tag}> without a valid timestamp: {timestamp!r}")
        self.stats.messages += 1
        out: list[FeedMessage] = []
        problems: list[str] = []
        handler(self, _Message(root, event_id, ts, out, problems))
        return Translation(out, problems)

    # -- odds_change --------------------------------------------------------------------

    def _odds_change(self, m: _Message) -> None:
        root, event_id, ts, out, problems = m
        status_element = root.find("sport_event_status")
        if status_element is not None:
            self._event(event_id, ts, out, status_element)
        odds = root.find("odds")
        if odds is None:
            return
        product = root.get("product")
        for element, key in _keyed_markets(odds, m):
            market_id, type_id, specifiers = key
            code = _int(element.get("status", "1"))
            if code in _ALREADY_FINAL:
                continue
            if code not in _MARKET_STATUS:
                problems.append(f"{market_id}: unknown market status {element.get('status')!r}")
                continue
            assert code is not None
            status, reason = _MARKET_STATUS[code]
            prices = self._outcomes(element, market_id, problems)
            market = self._markets.get(market_id)
            if market is not None and market.status in {"settled", "voided"}:
                problems.append(f"{market_id} is {market.status}: odds_change ignored")
                continue
            if code == -2 and market is not None and market.product not in {None, product}:
                continue  # Handed over, and the new producer's odds are already here.
            if market is None:
                if not prices:
                    continue  # Nothing to show (an inactive market with no outcomes).
                market = self._new_market(market_id, event_id, type_id, ts, out)
                market.product = product
                market.outcomes.update(prices)
                market.status, market.reason = status, reason
                out.append(
                    _definition(market, type_id, specifiers, self._sport, ts, status, reason)
                )
                continue
            market.product = product
            new = [oid for oid in prices if oid not in market.outcomes]
            market.outcomes.update(prices)
            if new:
                market.status, market.reason = status, reason
                out.append(
                    _definition(
                        market, type_id, specifiers, self._sport, ts, status, reason, prices
                    )
                )
                continue
            odds_message = FeedOdds(
                event_id,
                market_id,
                ts,
                tuple(FeedPrice(oid, price) for oid, price in prices.items()),
            )
            status_message = FeedMarketStatus(event_id, market_id, ts, status, reason)
            # Reopen after the new prices are in, suspend before they move: a client
            # never sees an open market with stale prices.
            ordered: list[FeedMessage] = (
                [odds_message, status_message]
                if status == "open"
                else [status_message, odds_message]
            )
            same_status = (status, reason) == (market.status, market.reason)
            market.status, market.reason = status, reason
            out.extend(
                m
                for m in ordered
                if (m is odds_message and odds_message.prices)
                or (m is status_message and not same_status)
            )

    def _outcomes(
        self, element: ET.Element, market_id: str, problems: list[str]
    ) -> dict[str, Decimal | None]:
        prices: dict[str, Decimal | None] = {}
        for outcome in element.iter("outcome"):
            oid = outcome.get("id")
            if not oid:
                problems.append(f"{market_id}: outcome without an id")
                continue
            raw = outcome.get("odds")
            price = _decimal(raw)
            if raw is not None and (price is None or not price >= _MIN_PRICE):
                problems.append(f"{market_id}/{oid}: odds {raw!r} is not a price; shown as none")
                price = None
            prices[oid] = price if outcome.get("active", "1") == "1" else None
        return prices

    # -- bet_stop -----------------------------------------------------------------------

    def _bet_stop(self, m: _Message) -> None:
        root, event_id, ts, out, problems = m
        groups = frozenset((root.get("groups") or "all").split("|"))
        code = root.get("market_status", "-1")
        if code not in {"0", "-1"}:
            problems.append(f"bet_stop {event_id}: market_status {code!r} read as -1")
        status: MarketStatus = "suspended"
        reason = "inactive" if code == "0" else "bet_stop"
        for market in self._markets.values():
            if market.event_id != event_id or market.status != "open":
                continue  # Only active markets are stopped.
            if "all" not in groups and market.groups and not (market.groups & groups):
                continue
            market.status, market.reason = status, reason
            out.append(FeedMarketStatus(event_id, market.market_id, ts, status, reason))

    # -- bet_settlement -----------------------------------------------------------------

    def _bet_settlement(self, m: _Message) -> None:
        root, event_id, ts, out, problems = m
        for element, key in _keyed_markets(root, m):
            market_id, type_id, specifiers = key
            settlement = _settlement(element, market_id, problems)
            if settlement is None:
                continue
            market = self._prepare_result(
                market_id,
                event_id,
                type_id,
                specifiers,
                ts,
                out,
                [o for o, _ in settlement.results],
            )
            same = (settlement.results, (settlement.dead_heat, settlement.void_factors)) == (
                market.results,
                market.factors,
            )
            if market.status == "settled" and same:
                self.stats.unchanged += 1
                continue
            self._undo_final(market, ts, out)
            out.append(
                FeedResult(
                    event_id,
                    market_id,
                    ts,
                    settlement.results,
                    dead_heat=settlement.dead_heat,
                    void_factors=settlement.void_factors,
                )
            )
            market.status, market.reason = "settled", None
            market.results = settlement.results
            market.factors = (settlement.dead_heat, settlement.void_factors)

    # -- bet_cancel ---------------------------------------------------------------------

    def _bet_cancel(self, m: _Message) -> None:
        root, event_id, ts, out, _ = m
        if _windowed(root):
            # Only bets placed in a time window are void: the market itself stands.
            self.stats.partial_cancels += 1
            return
        for _, (market_id, type_id, specifiers) in _keyed_markets(root, m):
            market = self._prepare_result(market_id, event_id, type_id, specifiers, ts, out, [])
            if market.status == "voided":
                self.stats.unchanged += 1
                continue
            self._undo_final(market, ts, out)
            out.append(FeedResult(event_id, market_id, ts, void=True, reason="cancelled"))
            market.status, market.reason = "voided", "cancelled"
            market.results, market.factors = (), ((), ())

    # -- rollbacks ----------------------------------------------------------------------

    def _rollback_bet_settlement(self, m: _Message) -> None:
        self._rollback(m, "settled")

    def _rollback_bet_cancel(self, m: _Message) -> None:
        if _windowed(m.root):
            self.stats.partial_cancels += 1  # Undoes a windowed cancel: nothing was applied.
            return
        self._rollback(m, "voided")

    def _rollback(self, m: _Message, undoes: MarketStatus) -> None:
        root, _, ts, out, problems = m
        for _, (market_id, _, _) in _keyed_markets(root, m):
            market = self._markets.get(market_id)
            if market is None or market.status != undoes:
                state = "unknown" if market is None else market.status
                problems.append(f"<{root.tag}> {market_id}: market is {state}, nothing to undo")
                continue
            self._undo_final(market, ts, out)

    # -- shared steps -------------------------------------------------------------------

    def _undo_final(self, market: _Market, ts: int, out: list[FeedMessage]) -> None:
        """Take a settled or voided market back to suspended (no-op otherwise)."""
        if market.status not in {"settled", "voided"}:
            return
        out.append(FeedResult(market.event_id, market.market_id, ts, rollback=True))
        market.status, market.reason = "suspended", "rollback"
        market.results, market.factors = (), ((), ())

    def _prepare_result(
        self,
        market_id: str,
        event_id: str,
        type_id: str,
        specifiers: str,
        ts: int,
        out: list[FeedMessage],
        outcome_ids: list[str],
    ) -> _Market:
        """The market a result applies to, created (closed) if never seen and given any
        outcome the result names that it did not know."""
        market = self._markets.get(market_id)
        if market is None:
            market = self._new_market(market_id, event_id, type_id, ts, out)
            market.outcomes.update(dict.fromkeys(outcome_ids))
            market.status, market.reason = "closed", None
            out.append(_definition(market, type_id, specifiers, self._sport, ts, "closed", None))
            return market
        new = [oid for oid in outcome_ids if oid not in market.outcomes]
        if new:
            self._undo_final(market, ts, out)
            market.outcomes.update(dict.fromkeys(new))
            status = market.status
            added = dict.fromkeys(new)
            out.append(
                _definition(market, type_id, specifiers, self._sport, ts, status, None, added)
            )
        return market

    def _new_market(
        self, market_id: str, event_id: str, type_id: str, ts: int, out: list[FeedMessage]
    ) -> _Market:
        if event_id not in self._events:
            self._event(event_id, ts, out, None)
        market = _Market(market_id, event_id, groups=self._groups.get(type_id, frozenset()))
        self._markets[market_id] = market
        return market

    def _event(
        self, event_id: str, ts: int, out: list[FeedMessage], status: ET.Element | None
    ) -> None:
        previous = self._events.get(event_id)
        phase: EventPhase = "pre"
        score = (0, 0)
        clock: Clock | None = None
        if status is not None:
            phase = _PHASES.get(_int(status.get("status")) or 0, "pre")
            score = (_int(status.get("home_score")) or 0, _int(status.get("away_score")) or 0)
            clock = _clock(status, phase)
        if previous is not None and _PHASE_ORDER[previous.phase] > _PHASE_ORDER[phase]:
            phase = previous.phase  # A match does not go back in time.
        event = FeedEvent(
            event_id=event_id,
            ts=ts,
            sport=self._sport,
            competition="",
            home=event_id,
            away="",
            start_time=0,
            phase=phase,
            score=score,
            clock=clock,
        )
        if previous is not None and msgspec.structs.replace(previous, ts=ts) == event:
            return
        self._events[event_id] = event
        out.append(event)

    _HANDLERS: Final = {
        "odds_change": _odds_change,
        "bet_stop": _bet_stop,
        "bet_settlement": _bet_settlement,
        "bet_cancel": _bet_cancel,
        "rollback_bet_settlement": _rollback_bet_settlement,
        "rollback_bet_cancel": _rollback_bet_cancel,
    }


def _definition(
    market: _Market,
    type_id: str,
    specifiers: str,
    sport: str,
    ts: int,
    status: MarketStatus,
    reason: str | None,
    only: Mapping[str, Decimal | None] | None = None,
) -> FeedMarket:
    """A definition listing ``only`` those outcomes (default: every known one)."""
    listed = market.outcomes if only is None else only
    return FeedMarket(
        event_id=market.event_id,
        market_id=market.market_id,
        ts=ts,
        sport=sport,
        market_kind=f"uof_{type_id}",
        name=f"Market {type_id}" + (f" ({specifiers})" if specifiers else ""),
        selections=tuple(FeedSelection(oid, oid, price) for oid, price in listed.items()),
        status=status,
        main=type_id == "1",
        reason=None if status == "open" else reason,
    )


def _windowed(root: ET.Element) -> bool:
    """A cancel (or its rollback) of the bets placed in a time window only."""
    return root.get("start_time") is not None or root.get("end_time") is not None


def _keyed_markets(
    parent: ET.Element, m: _Message
) -> Iterator[tuple[ET.Element, tuple[str, str, str]]]:
    """The ``market`` elements below ``parent`` with their keys; one without an id is
    reported and left out."""
    for element in parent.iter("market"):
        key = _market_key(element, m.event_id)
        if key is None:
            m.problems.append(f"<{m.root.tag}> {m.event_id}: market without an id")
            continue
        yield element, key


def _market_key(element: ET.Element, event_id: str) -> tuple[str, str, str] | None:
    """(market_id, type id, normalised specifiers): one market is one UOF market type
    with one set of specifiers, in any order."""
    type_id = element.get("id")
    if not type_id:
        return None
    raw = element.get("specifiers") or ""
    specifiers = "|".join(sorted(s for s in raw.split("|") if s))
    market_id = f"{event_id}/{type_id}" + (f"/{specifiers}" if specifiers else "")
    return market_id, type_id, specifiers


def _settlement(element: ET.Element, market_id: str, problems: list[str]) -> _Settlement | None:
    results: list[tuple[str, SelectionStatus]] = []
    dead_heat: list[tuple[str, Decimal]] = []
    void_factors: list[tuple[str, Decimal]] = []
    for outcome in element.iter("outcome"):
        oid = outcome.get("id")
        won = outcome.get("result")
        void_factor = _factor(outcome.get("void_factor"), allow_zero=True)
        dead_heat_factor = _factor(outcome.get("dead_heat_factor"), allow_zero=False)
        if not oid or won not in {"0", "1"}:
            problems.append(f"{market_id}: outcome {oid!r} with result {won!r}; market skipped")
            return None
        if void_factor is _BAD or dead_heat_factor is _BAD:
            problems.append(
                f"{market_id}: outcome {oid!r} with a factor not in 0-1; market skipped"
            )
            return None
        if void_factor == _ONE:
            results.append((oid, "void"))  # Fully refunded.
            continue
        result: SelectionStatus = "winner" if won == "1" else "loser"
        results.append((oid, result))
        if void_factor:
            void_factors.append((oid, void_factor))
        if dead_heat_factor is not None and result == "winner" and dead_heat_factor != _ONE:
            dead_heat.append((oid, dead_heat_factor))
    if not results:
        problems.append(f"{market_id}: settlement without outcomes; skipped")
        return None
    return _Settlement(tuple(results), tuple(dead_heat), tuple(void_factors))


_BAD: Final = Decimal("NaN")


def _factor(value: str | None, *, allow_zero: bool) -> Decimal | None:
    """A factor attribute: None when absent, :data:`_BAD` when not a number in (0, 1]
    (or [0, 1] with ``allow_zero``)."""
    if value is None:
        return None
    factor = _decimal(value)
    if factor is None or factor > _ONE or factor < 0 or (factor == 0 and not allow_zero):
        return _BAD
    return factor


def _clock(status: ET.Element, phase: EventPhase) -> Clock | None:
    element = status.find("clock")
    match_time = None if element is None else element.get("match_time")
    if element is None or not match_time:
        return None
    minutes, _, seconds = match_time.partition(":")
    total = (_int(minutes) or 0) * 60 + (_int(seconds) or 0)
    code = _int(status.get("match_status"))
    period = _PERIODS.get(code, f"ms{code}") if code is not None else ""
    running = phase == "live" and element.get("stopped") != "true"
    return Clock(period, total, running)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


# ---------------------------------------------------------------------------
# Safe parsing
# ---------------------------------------------------------------------------


def parse(raw: bytes) -> ET.Element:
    """Parse one UOF message into an ElementTree element. Raises :class:`UofError` for
    anything but a plain, well-formed document within :data:`MAX_MESSAGE_BYTES`: a
    DOCTYPE (and so any entity declaration) is refused before it can take effect."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise UofError(f"message of {len(raw)} bytes, over {MAX_MESSAGE_BYTES}")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_external
    try:
        parser.Parse(raw, True)
    except (expat.ExpatError, LookupError, ValueError) as exc:
        # LookupError: an unknown encoding declared; ValueError: undecodable text.
        raise UofError(f"not well-formed XML: {exc}") from None
    return builder.close()


def _refuse_doctype(*_: object) -> None:
    raise UofError("XML with a DOCTYPE is refused (no DTDs or entities in UOF)")


def _refuse_entity(*_: object) -> None:
    raise UofError("XML declaring entities is refused")


def _refuse_external(*_: object) -> int:
    raise UofError("XML referring to external entities is refused")


# ---------------------------------------------------------------------------
# Reading a recording
# ---------------------------------------------------------------------------


def read_uof(path: Path, report: ReadReport) -> Iterator[FeedMessage]:
    """Feed messages of UOF XML messages: ``path`` is one message, or a directory of
    them read in file-name order (hidden files left out). A message that cannot be read,
    or the part of one that cannot be applied, is reported with its position in that
    order (as the line number) and its file name, and skipped."""
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    adapter = UofAdapter()
    for number, file in enumerate(files, 1):
        try:
            raw = file.read_bytes()
            translation = adapter.translate(raw)
        except (OSError, UofError) as exc:
            report.skip(number, f"{file.name}: {exc}")
            continue
        yield from reported(report, number, translation, f"{file.name}: ")
    log.debug("uof %s: %s", path, adapter.stats)
