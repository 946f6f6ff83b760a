"""The sans-I/O market book: feed messages in, minimal protocol messages out.

:class:`MarketBook` holds the authoritative state of one market; :class:`Books` holds every
market and event a processor owns and routes feed messages to them. Nothing here awaits,
reads a clock or touches the network: the caller passes every input, including the
function that mints epochs, so the logic is tested fast and deterministically.

Sequencing: a market's first message is its ``Snapshot`` at ``seq`` 1; every later change
is one ``Delta`` with ``seq`` one higher. A feed message that changes nothing produces
nothing and consumes no ``seq``. Each snapshot and delta carries the book checksum of the
book it leaves (``crc``, :mod:`protocol.checksum`), kept incrementally: a step recomputes
the canonical text of the selections it changed only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Literal

import msgspec

import protocol
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
from protocol import (
    FINAL_MARKET_STATES,
    UNSET,
    Delta,
    EventState,
    MarketStatus,
    SelectionChange,
    SelectionStatus,
    Snapshot,
    UnsetType,
)
from protocol.checksum import crc_of_lines, selection_line
from protocol.types import LADDER_DEPTH, SELECTION_FIELDS, Selection

Output = Snapshot | Delta | EventState

RejectReason = Literal[
    "unknown_market",
    "unknown_selection",
    "market_final",
    "market_closed",
    "event_mismatch",
    "invalid_price",
    "invalid_value",
    "invalid_definition",
    "invalid_transition",
]

#: Lowest decimal price that means anything (a 1.00 price pays nothing back).
MIN_PRICE = Decimal("1.01")

#: Statuses a settlement or void gives a selection; a rollback makes them active again.
_RESULT_STATUSES: frozenset[str] = frozenset({"winner", "loser", "void"})
_ONE = Decimal(1)
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


class FeedRejected(Exception):
    """A feed message cannot be applied; the book is unchanged.

    Raised for messages that are well-formed but inconsistent with the book (a price for
    a market never defined, a change after settlement). The processor dead-letters them
    with ``reason`` and carries on.
    """

    def __init__(self, reason: RejectReason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class MarketBook:
    """Authoritative state of one market, advancing one ``seq`` per change."""

    __slots__ = ("_lines", "_positions", "_snapshot")

    def __init__(self, snapshot: Snapshot):
        self._snapshot = msgspec.structs.replace(snapshot, reset=False, conflated=False)
        self._positions: dict[str, int] | None = None
        """Selection id -> index in the snapshot's selections (built when first needed;
        dropped whenever a change may add selections)."""
        self._lines: list[bytes] | None = None
        """The checksum line of each selection, in order (built when first needed)."""

    @property
    def snapshot(self) -> Snapshot:
        """The current book (immutable; safe to share)."""
        return self._snapshot

    @classmethod
    def create(cls, definition: FeedMarket, epoch: str) -> MarketBook:
        """A new market at ``seq`` 1 from its first definition. Raises
        :class:`FeedRejected` for an invalid definition."""
        _check_definition(definition)
        _refuse_final_by_status(definition.status, definition.market_id)
        selections = tuple(_selection_of(s) for s in definition.selections)
        return cls(
            Snapshot(
                market_id=definition.market_id,
                event_id=definition.event_id,
                seq=1,
                epoch=epoch,
                ts=definition.ts,
                sport=definition.sport,
                kind=definition.market_kind,
                name=definition.name,
                status=definition.status,
                selections=selections,
                main=definition.main,
                reason=definition.reason,
                volume=definition.volume,
                crc=crc_of_lines(definition.status, [selection_line(s) for s in selections]),
            )
        )

    def apply(self, message: FeedMarket | FeedMarketStatus | FeedOdds | FeedResult) -> Delta | None:
        """Apply one feed message for this market; return its delta, or None if nothing
        changed. Raises :class:`FeedRejected` (book unchanged) when the message is invalid
        for the market's state.

        Transitions: ``open`` and ``suspended`` move freely; ``closed`` freezes prices and
        only a result may follow; a market becomes ``settled`` or ``voided`` only by a
        result (which gives every selection its outcome), and then changes only by a
        rollback (a :class:`FeedResult` with ``rollback``), which takes it back to
        ``suspended`` with its selections active again.
        """
        if isinstance(message, FeedOdds):
            return self._apply_odds(message)
        current = self._snapshot
        if message.event_id != current.event_id:
            raise FeedRejected(
                "event_mismatch",
                f"{current.market_id} belongs to {current.event_id}, not {message.event_id}",
            )
        rollback = isinstance(message, FeedResult) and message.rollback
        if current.status in FINAL_MARKET_STATES and not rollback:
            raise FeedRejected(
                "market_final", f"{current.market_id} is {current.status}; no change allowed"
            )
        status: MarketStatus | None
        reason: str | None
        changes: list[SelectionChange]
        name: str | UnsetType = UNSET
        main: bool | UnsetType = UNSET
        volume: Decimal | UnsetType | None = UNSET
        match message:
            case FeedMarket():
                _refuse_final_by_status(message.status, current.market_id)
                if message.market_kind != current.kind:
                    raise FeedRejected(
                        "invalid_definition",
                        f"{current.market_id} is a {current.kind} market, "
                        f"not {message.market_kind}",
                    )
                status, reason = message.status, message.reason
                changes = self._definition_changes(message)
                if message.name != current.name:
                    name = message.name
                if message.main != current.main:
                    main = message.main
                volume = message.volume
            case FeedMarketStatus():
                _refuse_final_by_status(message.status, current.market_id)
                status, reason = message.status, message.reason
                changes = []
            case FeedResult() if message.rollback:
                status, reason = "suspended", message.reason or "rollback"
                changes = self._rollback_changes(message)
            case FeedResult():
                factors = _result_factors(message, current.market_id)
                if message.void:
                    status, reason = "voided", message.reason
                    changes = self._result_changes({}, factors, void_all=True)
                else:
                    status, reason = "settled", message.reason
                    changes = self._result_changes(dict(message.results), factors, void_all=False)
        if status == "open":
            reason = None  # A reopened market carries no suspension reason.
        reopens = status is not None and status not in FINAL_MARKET_STATES | {"closed"}
        if current.status == "closed" and (
            reopens or (changes and status not in FINAL_MARKET_STATES)
        ):
            raise FeedRejected(
                "market_closed",
                f"{current.market_id} is closed: prices are frozen, only a result may follow",
            )
        new_status = UNSET if status is None or status == current.status else status
        new_reason = UNSET if reason == current.reason else reason
        new_volume = UNSET if volume is UNSET or volume == current.volume else volume
        unchanged = (new_status, new_reason, name, main, new_volume) == (UNSET,) * 5
        if unchanged and not changes:
            return None
        delta = Delta(
            market_id=current.market_id,
            event_id=current.event_id,
            seq=current.seq + 1,
            epoch=current.epoch,
            ts=message.ts,
            status=new_status,
            reason=new_reason,
            selections=tuple(changes),
            name=name,
            main=main,
            volume=new_volume,
        )
        book = protocol.apply(current, delta)  # The delta has no crc yet: nothing to verify.
        if changes:
            self._positions = None
            self._lines = None
        crc = crc_of_lines(book.status, self._lines_of(book))
        self._snapshot = msgspec.structs.replace(book, crc=crc)
        return msgspec.structs.replace(delta, crc=crc)

    def _lines_of(self, book: Snapshot) -> list[bytes]:
        """The checksum lines of ``book``'s selections (the current book's, or the book
        being made when the selections did not change)."""
        lines = self._lines
        if lines is None:
            lines = self._lines = [selection_line(s) for s in book.selections]
        return lines

    def _apply_odds(self, message: FeedOdds) -> Delta | None:
        """:meth:`apply` for prices, the bulk of any feed, without the generic path's
        intermediate objects: the same checks in the same order, the same delta, and the
        same book ``protocol.apply`` would give (the property tests hold both to it)."""
        current = self._snapshot
        market_id = current.market_id
        if message.event_id != current.event_id:
            raise FeedRejected(
                "event_mismatch",
                f"{market_id} belongs to {current.event_id}, not {message.event_id}",
            )
        if current.status in FINAL_MARKET_STATES:
            raise FeedRejected(
                "market_final", f"{market_id} is {current.status}; no change allowed"
            )
        self._refuse_if_closed()
        prices = message.prices
        if len(prices) == 2:
            if prices[0].selection_id == prices[1].selection_id:
                _refuse_duplicates([p.selection_id for p in prices], market_id)
        elif len(prices) > 2:
            _refuse_duplicates([p.selection_id for p in prices], market_id)
        positions = self._positions
        if positions is None:
            positions = self._positions = {
                s.selection_id: i for i, s in enumerate(current.selections)
            }
        selections: list[Selection] | None = None
        changes: list[SelectionChange] = []
        changed: list[int] = []
        for fp in prices:
            price = fp.price
            selection_id = fp.selection_id
            if price is not None and not (price.is_finite() and price >= MIN_PRICE):
                _check_price(price, market_id, selection_id)
            position = positions.get(selection_id)
            if position is None:
                raise FeedRejected(
                    "unknown_selection", f"{market_id} has no selection {selection_id!r}"
                )
            old = current.selections[position]
            status = fp.status
            if status == old.status:
                status = None
            if status is None and _astuple(fp)[3:] == _NO_PRICE_DATA:
                # The common case, a new price and nothing else, without the field map.
                if price == old.price:
                    continue
                change = SelectionChange(selection_id, price=price)
                new = msgspec.structs.replace(old, price=price)
            else:
                fields: dict[str, object] = {}
                if price != old.price:
                    fields["price"] = price
                if status is not None:
                    fields["status"] = status
                data = False
                for field in _FEED_PRICE_DATA:
                    value = getattr(fp, field)
                    if value is not UNSET and value != getattr(old, field):
                        fields[field] = value
                        data = True
                if not fields:
                    continue
                change = SelectionChange(selection_id, **fields)  # type: ignore[arg-type]
                if data:
                    # What the book holds was checked when it came in: check what changes.
                    _check_market_data(change, market_id, selection_id)
                new = msgspec.structs.replace(old, **fields)
            changes.append(change)
            changed.append(position)
            if selections is None:
                selections = list(current.selections)
            selections[position] = new
        volume = message.volume
        _check_volume(volume, market_id, "market")
        new_volume = UNSET if volume is UNSET or volume == current.volume else volume
        if selections is None and new_volume is UNSET:
            return None
        # Past the last check: the lines may change now that the step cannot be refused.
        lines = self._lines_of(current)
        if selections is not None:
            for position in changed:
                lines[position] = selection_line(selections[position])
        crc = crc_of_lines(current.status, lines)
        delta = Delta(
            market_id=market_id,
            event_id=current.event_id,
            seq=current.seq + 1,
            epoch=current.epoch,
            ts=message.ts,
            selections=tuple(changes),
            volume=new_volume,
            crc=crc,
        )
        self._snapshot = msgspec.structs.replace(
            current,
            seq=delta.seq,
            ts=message.ts,
            selections=current.selections if selections is None else tuple(selections),
            volume=current.volume if new_volume is UNSET else new_volume,
            crc=crc,
        )
        return delta

    def _refuse_if_closed(self) -> None:
        if self._snapshot.status == "closed":
            raise FeedRejected(
                "market_closed", f"{self._snapshot.market_id} is closed; prices are frozen"
            )

    def _definition_changes(self, definition: FeedMarket) -> list[SelectionChange]:
        _check_definition(definition)
        known = {s.selection_id: s for s in self._snapshot.selections}
        changes = []
        for fs in definition.selections:
            new = _selection_of(fs)
            old = known.get(fs.selection_id)
            if old is None:
                changes.append(_added(new))
                continue
            change = _diff(old, new)
            if change is not None:
                changes.append(change)
        return changes

    def _result_changes(
        self,
        results: dict[str, SelectionStatus],
        factors: dict[str, dict[str, Decimal]],
        *,
        void_all: bool,
    ) -> list[SelectionChange]:
        known = {s.selection_id for s in self._snapshot.selections}
        unknown = sorted(set(results) - known)
        not_results = sorted(s for s, r in results.items() if r == "active")
        if not_results:
            raise FeedRejected(
                "invalid_transition",
                f"{self._snapshot.market_id}: a result cannot leave {not_results} active",
            )
        if unknown:
            raise FeedRejected(
                "unknown_selection", f"{self._snapshot.market_id} has no selection(s) {unknown}"
            )
        changes = []
        for sel in self._snapshot.selections:
            if void_all:
                result: SelectionStatus = "void" if sel.status != "removed" else "removed"
            elif sel.selection_id in results:
                result = results[sel.selection_id]
            elif sel.status == "active":
                result = "loser"  # A settlement names the winners; the unnamed lose.
            else:
                result = sel.status
            settled = msgspec.structs.replace(
                sel, status=result, **factors.get(sel.selection_id, {})
            )
            change = _diff(sel, settled)
            if change is not None:
                changes.append(change)
        return changes

    def _rollback_changes(self, message: FeedResult) -> list[SelectionChange]:
        if message.results or message.void or message.dead_heat or message.void_factors:
            raise FeedRejected(
                "invalid_transition",
                f"{message.market_id}: a rollback names no results, void or factors",
            )
        if self._snapshot.status not in FINAL_MARKET_STATES:
            raise FeedRejected(
                "invalid_transition",
                f"{message.market_id} is {self._snapshot.status}: nothing to roll back",
            )
        changes = []
        for sel in self._snapshot.selections:
            # Prices were left as they were by the result, so "active" is enough to
            # bring each selection back with its last prices.
            status: SelectionStatus = "active" if sel.status in _RESULT_STATUSES else sel.status
            undone = msgspec.structs.replace(sel, status=status, dead_heat=None, void_factor=None)
            change = _diff(sel, undone)
            if change is not None:
                changes.append(change)
        return changes


#: FeedPrice fields that update the book's optional market data when present.
_FEED_PRICE_DATA = ("back", "lay", "ltp", "volume", "bsp", "adjustment", "removed_at")
#: A FeedPrice's fields after selection_id, price and status when it carries no market
#: data (one tuple comparison skips the field-by-field check).
_NO_PRICE_DATA = (UNSET,) * len(_FEED_PRICE_DATA)
_astuple = msgspec.structs.astuple
if FeedPrice.__struct_fields__[3:] != _FEED_PRICE_DATA:  # pragma: no cover - a model edit
    raise ImportError("FeedPrice's market data fields must follow selection_id, price, status")


def _selection_of(fs: FeedSelection) -> Selection:
    """The book's form of a feed's selection (they share their fields, in one order)."""
    return Selection(*_astuple(fs))


def _added(sel: Selection) -> SelectionChange:
    """The change that adds ``sel``: its name, price and status always, the optional
    market data when it has any."""
    fields: dict[str, object] = {"name": sel.name, "price": sel.price, "status": sel.status}
    for name in SELECTION_FIELDS[3:]:
        value = getattr(sel, name)
        if value is not None and value != ():
            fields[name] = value
    return SelectionChange(sel.selection_id, **fields)  # type: ignore[arg-type]


def _diff(old: Selection, new: Selection) -> SelectionChange | None:
    """The minimal change from ``old`` to ``new`` (same selection), None when equal."""
    if old == new:
        return None
    fields: dict[str, object] = {}
    for name in SELECTION_FIELDS:
        value = getattr(new, name)
        if value != getattr(old, name):
            fields[name] = value
    if not fields:
        return None  # Equal values in different forms (2.1 and 2.10) are no change.
    return SelectionChange(old.selection_id, **fields)  # type: ignore[arg-type]


def _result_factors(message: FeedResult, market_id: str) -> dict[str, dict[str, Decimal]]:
    """Selection -> {"dead_heat": f, "void_factor": f} of a settlement, validated."""
    named = dict(message.results)
    factors: dict[str, dict[str, Decimal]] = {}
    for field, pairs, allowed in (
        ("dead_heat", message.dead_heat, {"winner"}),
        ("void_factor", message.void_factors, {"winner", "loser"}),
    ):
        for selection_id, factor in pairs:
            if named.get(selection_id) not in allowed or message.void:
                raise FeedRejected(
                    "invalid_transition",
                    f"{market_id}/{selection_id}: a {field} needs a result "
                    f"{'/'.join(sorted(allowed))} in the same settlement",
                )
            if not (factor.is_finite() and _ZERO < factor <= _ONE):
                raise FeedRejected(
                    "invalid_value", f"{market_id}/{selection_id}: {field} {factor} not in (0, 1]"
                )
            factors.setdefault(selection_id, {})[field] = factor
    return factors


def _check_price(price: Decimal | None, market_id: str, selection_id: str) -> None:
    if price is not None and not (price.is_finite() and price >= MIN_PRICE):
        raise FeedRejected(
            "invalid_price",
            f"{market_id}/{selection_id}: price {price} is not a decimal price >= {MIN_PRICE}",
        )


def _check_volume(volume: object, market_id: str, selection_id: str) -> None:
    if isinstance(volume, Decimal) and not (volume.is_finite() and volume >= _ZERO):
        raise FeedRejected(
            "invalid_value", f"{market_id}/{selection_id}: volume {volume} is not >= 0"
        )


def _check_market_data(
    data: FeedSelection | SelectionChange, market_id: str, selection_id: str
) -> None:
    """Refuse optional market data no screen should show: bad prices in the ladders,
    ``ltp`` or ``bsp``; sizes and volumes that are not positive; too many levels."""
    for side in (data.back, data.lay):
        if isinstance(side, tuple):
            if len(side) > LADDER_DEPTH:
                raise FeedRejected(
                    "invalid_value",
                    f"{market_id}/{selection_id}: {len(side)} levels, at most {LADDER_DEPTH}",
                )
            for price, size in side:
                _check_price(price, market_id, selection_id)
                if not (size.is_finite() and size > _ZERO):
                    raise FeedRejected(
                        "invalid_value", f"{market_id}/{selection_id}: level size {size} <= 0"
                    )
    for traded in (data.ltp, data.bsp):
        if isinstance(traded, Decimal):
            _check_price(traded, market_id, selection_id)
    _check_volume(data.volume, market_id, selection_id)
    adjustment = data.adjustment
    if isinstance(adjustment, Decimal) and not (
        adjustment.is_finite() and _ZERO <= adjustment <= _HUNDRED
    ):
        raise FeedRejected(
            "invalid_value", f"{market_id}/{selection_id}: adjustment {adjustment} not in 0-100"
        )


def _refuse_duplicates(ids: list[str], market_id: str) -> None:
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise FeedRejected("invalid_definition", f"{market_id}: selection(s) {dupes} repeated")


def _check_definition(definition: FeedMarket) -> None:
    _refuse_duplicates([s.selection_id for s in definition.selections], definition.market_id)
    _check_volume(definition.volume, definition.market_id, "market")
    for sel in definition.selections:
        _check_price(sel.price, definition.market_id, sel.selection_id)
        _check_market_data(sel, definition.market_id, sel.selection_id)


def _refuse_final_by_status(status: MarketStatus, market_id: str) -> None:
    if status in FINAL_MARKET_STATES:
        raise FeedRejected(
            "invalid_transition",
            f"{market_id}: a market becomes {status} by a result, not a status change",
        )


class Books:
    """Every market and event one processor owns.

    ``new_epoch`` mints the epoch of a market created here from scratch (not restored):
    it must return a value never used before for that market, e.g. derived from the
    processor's start time and a counter.
    """

    def __init__(self, new_epoch: Callable[[str], str]):
        self._new_epoch = new_epoch
        self.markets: dict[str, MarketBook] = {}
        self.events: dict[str, EventState] = {}

    def restore(self, snapshots: Iterable[Snapshot], events: Iterable[EventState] = ()) -> None:
        """Load books saved earlier (after a restart or a partition hand-over)."""
        for snap in snapshots:
            self.markets[snap.market_id] = MarketBook(snap)
        for event in events:
            self.events[event.event_id] = event

    def apply(self, message: FeedMessage) -> Output | None:
        """Apply one feed message; return what it produced (None when nothing changed).

        Raises :class:`FeedRejected` for a message inconsistent with the books; nothing
        is changed then.
        """
        if isinstance(message, FeedEvent):
            return self._apply_event(message)
        book = self.markets.get(message.market_id)
        if book is None:
            if not isinstance(message, FeedMarket):
                raise FeedRejected(
                    "unknown_market", f"no definition seen for market {message.market_id}"
                )
            book = MarketBook.create(message, self._new_epoch(message.market_id))
            self.markets[message.market_id] = book
            return book.snapshot
        return book.apply(message)

    def _apply_event(self, message: FeedEvent) -> EventState | None:
        previous = self.events.get(message.event_id)
        state = EventState(
            event_id=message.event_id,
            seq=1 if previous is None else previous.seq + 1,
            ts=message.ts,
            sport=message.sport,
            competition=message.competition,
            name=f"{message.home} v {message.away}" if message.away else message.home,
            home=message.home,
            away=message.away,
            start_time=message.start_time,
            phase=message.phase,
            score=message.score,
            clock=message.clock,
        )
        if previous is not None and _same_event(previous, state):
            return None
        self.events[message.event_id] = state
        return state


def _same_event(a: EventState, b: EventState) -> bool:
    return msgspec.structs.replace(a, seq=0, ts=0) == msgspec.structs.replace(b, seq=0, ts=0)
