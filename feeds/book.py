"""The sans-I/O market book: feed messages in, minimal protocol messages out.

:class:`MarketBook` holds the authoritative state of one market; :class:`Books` holds every
market and event a processor owns and routes feed messages to them. Nothing here awaits,
reads a clock or touches the network: the caller passes every input, including the
function that mints epochs, so the logic is tested fast and deterministically.

Sequencing: a market's first message is its ``Snapshot`` at ``seq`` 1; every later change
is one ``Delta`` with ``seq`` one higher. A feed message that changes nothing produces
nothing and consumes no ``seq``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedResult,
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
    apply_selection_changes,
)
from protocol.types import Selection

Output = Snapshot | Delta | EventState

RejectReason = Literal[
    "unknown_market", "unknown_selection", "market_final", "market_closed", "event_mismatch"
]


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

    __slots__ = ("_snapshot",)

    def __init__(self, snapshot: Snapshot):
        self._snapshot = msgspec.structs.replace(snapshot, reset=False)

    @property
    def snapshot(self) -> Snapshot:
        """The current book (immutable; safe to share)."""
        return self._snapshot

    @classmethod
    def create(cls, definition: FeedMarket, epoch: str) -> MarketBook:
        """A new market at ``seq`` 1 from its first definition."""
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
                selections=tuple(
                    Selection(s.selection_id, s.name, s.price, s.status)
                    for s in definition.selections
                ),
                main=definition.main,
                reason=definition.reason,
            )
        )

    def apply(self, message: FeedMarket | FeedMarketStatus | FeedOdds | FeedResult) -> Delta | None:
        """Apply one feed message for this market; return its delta, or None if nothing
        changed. Raises :class:`FeedRejected` (book unchanged) when the message is invalid
        for the market's state."""
        current = self._snapshot
        if message.event_id != current.event_id:
            raise FeedRejected(
                "event_mismatch",
                f"{current.market_id} belongs to {current.event_id}, not {message.event_id}",
            )
        if current.status in FINAL_MARKET_STATES:
            raise FeedRejected(
                "market_final", f"{current.market_id} is {current.status}; no change allowed"
            )
        status: MarketStatus | None
        reason: str | None
        changes: list[SelectionChange]
        match message:
            case FeedMarket():
                status, reason = message.status, message.reason
                changes = self._definition_changes(message)
            case FeedMarketStatus():
                status, reason = message.status, message.reason
                changes = []
            case FeedOdds():
                self._refuse_if_closed()
                status, reason = None, current.reason
                changes = self._odds_changes(message)
            case FeedResult():
                if message.void:
                    status, reason = "voided", message.reason
                    changes = self._result_changes({}, void_all=True)
                else:
                    status, reason = "settled", message.reason
                    changes = self._result_changes(dict(message.results), void_all=False)
        if status == "open":
            reason = None  # A reopened market carries no suspension reason.
        if (
            current.status == "closed"
            and status is not None
            and status != "closed"
            and status not in FINAL_MARKET_STATES
        ):
            raise FeedRejected(
                "market_closed", f"{current.market_id} is closed; it can only be settled"
            )
        new_status = UNSET if status is None or status == current.status else status
        new_reason = UNSET if reason == current.reason else reason
        if new_status is UNSET and new_reason is UNSET and not changes:
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
        )
        self._snapshot = Snapshot(
            market_id=current.market_id,
            event_id=current.event_id,
            seq=delta.seq,
            epoch=current.epoch,
            ts=message.ts,
            sport=current.sport,
            kind=current.kind,
            name=current.name,
            status=current.status if new_status is UNSET else new_status,
            selections=apply_selection_changes(current.selections, delta.selections),
            main=current.main,
            reason=current.reason if new_reason is UNSET else new_reason,
        )
        return delta

    def _refuse_if_closed(self) -> None:
        if self._snapshot.status == "closed":
            raise FeedRejected(
                "market_closed", f"{self._snapshot.market_id} is closed; prices are frozen"
            )

    def _definition_changes(self, definition: FeedMarket) -> list[SelectionChange]:
        known = {s.selection_id: s for s in self._snapshot.selections}
        changes = []
        for fs in definition.selections:
            old = known.get(fs.selection_id)
            if old is None:
                changes.append(
                    SelectionChange(fs.selection_id, name=fs.name, price=fs.price, status=fs.status)
                )
                continue
            change = _selection_change(old, fs.name, fs.price, fs.status)
            if change is not None:
                changes.append(change)
        return changes

    def _odds_changes(self, odds: FeedOdds) -> list[SelectionChange]:
        known = {s.selection_id: s for s in self._snapshot.selections}
        changes = []
        for fp in odds.prices:
            old = known.get(fp.selection_id)
            if old is None:
                raise FeedRejected(
                    "unknown_selection",
                    f"{odds.market_id} has no selection {fp.selection_id!r}",
                )
            change = _selection_change(old, old.name, fp.price, fp.status or old.status)
            if change is not None:
                changes.append(change)
        return changes

    def _result_changes(
        self, results: dict[str, SelectionStatus], *, void_all: bool
    ) -> list[SelectionChange]:
        known = {s.selection_id for s in self._snapshot.selections}
        unknown = sorted(set(results) - known)
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
            if result != sel.status:
                changes.append(SelectionChange(sel.selection_id, status=result))
        return changes


def _selection_change(
    old: Selection, name: str, price: object, status: SelectionStatus
) -> SelectionChange | None:
    new_name = UNSET if name == old.name else name
    new_price = UNSET if price == old.price else price
    new_status = UNSET if status == old.status else status
    if new_name is UNSET and new_price is UNSET and new_status is UNSET:
        return None
    return SelectionChange(
        old.selection_id,
        name=new_name,
        price=new_price,  # type: ignore[arg-type]
        status=new_status,
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
            name=f"{message.home} v {message.away}",
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
