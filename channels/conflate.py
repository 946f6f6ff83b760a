"""Market-aware conflation of one client's outgoing frames (sans-I/O).

A :class:`Conflator` is the queue between the fan-out and one client's writer. While the
client keeps up it is a plain FIFO of the shared frames (encode once: every subscriber
gets the same bytes). Once the client falls behind (``soft_limit`` frames queued), or
when it asked for a conflation interval, market and event updates are queued in *slots*,
and a new update of a market that already has a slot queued is folded into it instead
of queued again (frames queued while the client kept up stay as they are):

* **Wire form.** A slot that absorbed more than one frame is sent as a ``snapshot`` of
  the market's authoritative book at the seq of the last frame it absorbed (``reset``
  false, or true when a reset snapshot was among them). A snapshot always replaces the
  client's book, so what the client holds is exact at every step: it never applies a
  delta across a hole (``protocol.apply`` would refuse one) and never sees a merged
  delta it cannot check. The book comes from ``book_of``, which must return the book
  *after* the frame being offered; the conflator checks that its epoch and seq match the
  frame's and otherwise queues the frame unmerged. Slots that absorbed nothing go out as
  the original shared frame.
* **State changes.** A frame that changes state (a market status or reason, a
  selection's status, or a reset snapshot) is never merged away: a slot holds at most
  one of them, so two state changes of a market always reach the client as two
  messages, in order. A state change does merge into the market's pending slot of price
  moves when that slot holds no state change yet: it then leaves at that slot's
  (earlier) place in the queue, so a suspension overtakes the queued prices it makes
  invalid instead of waiting behind them, and the prices it carries are the current ones.
* **Order.** A market's slots never change order, and merging only moves content into
  the market's *last* slot, so a client applying what it receives in order passes
  through a subsequence of the authoritative versions of the book and ends at the
  latest. Messages of different markets may overtake each other (the protocol promises
  no order between markets). Event-state frames are folded the same way (the latest
  event state wins; they are idempotent). Other frames (``ack``, ``error``,
  ``heartbeat``, ``reconnect``) are never merged or moved.
* **Pinning.** :meth:`pin` makes the next slot of a market unmergeable: after a resume
  the first message of the market is exactly the delta after the client's position (or
  a reset snapshot), so the client sees its resume continue.
* **Interval** (``interval_s`` > 0, the client's ``conflate_ms``): market and event
  updates are released in flushes at least ``interval_s`` apart; every slot queued
  before a flush starts goes out in it, one per market (two or more only when the market
  changed state more than once). Other frames are released at once when nothing is
  queued ahead of them. The first update after a quiet interval goes out at once.
* **Bound.** Past ``hard_limit`` slots :meth:`offer` refuses the frame (returns False):
  the caller closes the client with "reconnect and resume" (4001).

Every call is O(1) apart from :meth:`take`, which is O(frames taken): the fan-out stays
synchronous and cheap per subscriber. Time is passed in (``now``, seconds, monotonic).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import msgspec

from channels.frame import Frame
from protocol import UNSET, Delta, EventState, ServerMessage, Snapshot


class ConflationStats(msgspec.Struct):
    """Counters shared by the conflators of one node (for metrics)."""

    merged: int = 0
    """Market frames folded into a queued slot instead of queued."""
    snapshots: int = 0
    """Conflated snapshots sent (slots that absorbed more than one frame)."""
    events_merged: int = 0
    """Event-state frames folded into a queued one."""


class _Slot:
    """A queued market or event update that may absorb later ones (made only while the
    client is behind or has an interval; otherwise frames are queued bare)."""

    __slots__ = ("book", "event", "frame", "key", "merged", "order", "reset", "state")

    def __init__(self, frame: Frame, key: str, event: bool, order: int) -> None:
        self.frame = frame
        self.key = key
        self.event = event
        self.order = order
        self.book: Snapshot | None = None
        self.merged = 0
        self.state = False
        self.reset = False


def is_state_change(message: ServerMessage) -> bool:
    """True for a market message that changes state rather than prices: a status or
    reason change, a selection status change, or a reset snapshot (a new stream)."""
    if isinstance(message, Delta):
        if message.status is not UNSET or message.reason is not UNSET:
            return True
        return any(change.status is not UNSET for change in message.selections)
    if isinstance(message, Snapshot):
        return message.reset
    return False


def _no_books(market_id: str) -> Snapshot | None:
    return None


class Conflator:
    """One client's bounded, market-aware outgoing queue.

    ``book_of(market_id)`` returns the authoritative book the node holds for a market;
    it is called only while merging, with the frame being offered just fanned out (so
    the node's book is the one after it). ``snapshot_frame(book)`` makes the frame of a
    conflated snapshot; pass one that shares encodings between clients. ``stats`` may
    be shared by every conflator of a node.

    Cost: while the client keeps up, an offer appends the shared frame (a few
    attribute reads and a deque append); only a client that is behind or has an interval
    pays for slots, state checks and merging.
    """

    __slots__ = (
        "_appended",
        "_book_of",
        "_events",
        "_hard",
        "_interval",
        "_last_gated",
        "_markets",
        "_next_flush",
        "_pinned",
        "_release_upto",
        "_slots",
        "_snapshot_frame",
        "_soft",
        "stats",
    )

    def __init__(
        self,
        *,
        soft_limit: int,
        hard_limit: int,
        book_of: Callable[[str], Snapshot | None] = _no_books,
        snapshot_frame: Callable[[Snapshot], Frame] = Frame,
        interval_s: float = 0.0,
        stats: ConflationStats | None = None,
    ) -> None:
        if not 0 <= soft_limit < hard_limit:
            raise ValueError(f"need 0 <= soft_limit < hard_limit, got {soft_limit}, {hard_limit}")
        self._soft = soft_limit
        self._hard = hard_limit
        self._book_of = book_of
        self._snapshot_frame = snapshot_frame
        # Bare frames (queued as they came) and slots (updates that may absorb others).
        self._slots: deque[Frame | _Slot] = deque()
        # The last slot of each market / event, while it is queued: where a newer update
        # of it may fold. A bare frame of a market queued after it removes it (order).
        self._markets: dict[str, _Slot] = {}
        self._events: dict[str, _Slot] = {}
        self._pinned: set[str] = set()
        self._appended = 0
        self._interval = 0.0
        self._release_upto = 0
        self._last_gated = -1
        self._next_flush = 0.0
        self.stats = stats if stats is not None else ConflationStats()
        self.interval_s = interval_s

    # -- configuration ---------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        return self._interval

    @interval_s.setter
    def interval_s(self, value: float) -> None:
        """Change the conflation interval; what is queued is released at the next take."""
        if value < 0:
            raise ValueError(f"interval_s must be >= 0, got {value}")
        self._interval = value
        self._release_upto = self._appended
        self._next_flush = 0.0

    def release_all(self) -> None:
        """Stop holding anything back (the connection is finishing): every queued slot
        may be taken now, and the interval is off."""
        self.interval_s = 0.0

    def pin(self, market_id: str) -> None:
        """The next frame queued for ``market_id`` goes out as it is (see module doc)."""
        self._pinned.add(market_id)

    # -- the fan-out side --------------------------------------------------------------

    def offer(self, frame: Frame) -> bool:
        """Queue or fold ``frame``. Returns False, queueing nothing, when the queue is at
        its hard limit: the client must be disconnected."""
        message = frame.message
        kind = type(message)
        if kind is Delta or kind is Snapshot:
            m = message.market_id  # type: ignore[union-attr]
            if self._pinned and m in self._pinned:
                self._pinned.discard(m)
            elif self._interval or len(self._slots) >= self._soft:
                return self._offer_market(frame, message, m)  # type: ignore[arg-type]
            if self._markets:
                self._markets.pop(m, None)  # Nothing may fold in ahead of this frame.
        elif kind is EventState:
            e = message.event_id  # type: ignore[union-attr]
            if self._interval or len(self._slots) >= self._soft:
                return self._offer_event(frame, message, e)  # type: ignore[arg-type]
            if self._events:
                self._events.pop(e, None)
        if len(self._slots) >= self._hard:
            return False
        self._slots.append(frame)
        return True

    def _offer_market(self, frame: Frame, message: Snapshot | Delta, m: str) -> bool:
        state = is_state_change(message)
        tail = self._markets.get(m)
        if tail is not None and not (tail.state and state):
            book = message if isinstance(message, Snapshot) else self._book_after(message)
            if book is not None:
                tail.book = book
                tail.merged += 1
                tail.state = tail.state or state
                tail.reset = tail.reset or (isinstance(message, Snapshot) and message.reset)
                self.stats.merged += 1
                return True
        slot = self._append_slot(frame, m, event=False)
        if slot is None:
            return False
        slot.state = state
        if isinstance(message, Snapshot):
            slot.book = message
            slot.reset = message.reset
        self._markets[m] = slot
        return True

    def _book_after(self, delta: Delta) -> Snapshot | None:
        book = self._book_of(delta.market_id)
        if book is None or book.epoch != delta.epoch or book.seq != delta.seq:
            return None  # Not the book after this delta: it cannot stand in for it.
        return book

    def _offer_event(self, frame: Frame, message: EventState, e: str) -> bool:
        tail = self._events.get(e)
        if tail is not None:
            held = tail.frame.message
            if isinstance(held, EventState) and message.seq > held.seq:
                tail.frame = frame
            self.stats.events_merged += 1
            return True
        slot = self._append_slot(frame, e, event=True)
        if slot is None:
            return False
        self._events[e] = slot
        return True

    def _append_slot(self, frame: Frame, key: str, *, event: bool) -> _Slot | None:
        if len(self._slots) >= self._hard:
            return None
        slot = _Slot(frame, key, event, self._appended)
        self._last_gated = self._appended
        self._appended += 1
        self._slots.append(slot)
        return slot

    # -- the writer side ---------------------------------------------------------------

    def take(self, now: float, limit: int) -> list[Frame]:
        """Up to ``limit`` frames that may be sent now, in order."""
        if self._interval and now >= self._next_flush and self._last_gated >= self._release_upto:
            # A flush: everything queued so far may go; later updates wait for the next.
            self._release_upto = self._appended
            self._next_flush = now + self._interval
        slots = self._slots
        out: list[Frame] = []
        while slots and len(out) < limit:
            item = slots[0]
            if isinstance(item, Frame):
                slots.popleft()
                out.append(item)
                continue
            if self._interval and item.order >= self._release_upto:
                break
            slots.popleft()
            index = self._events if item.event else self._markets
            if index.get(item.key) is item:
                del index[item.key]
            out.append(self._frame_of(item))
        return out

    def _frame_of(self, slot: _Slot) -> Frame:
        if slot.merged == 0 or slot.book is None:
            return slot.frame
        self.stats.snapshots += 1
        book = slot.book
        if book.reset != slot.reset:
            book = msgspec.structs.replace(book, reset=slot.reset)
        return self._snapshot_frame(book)

    def wait_s(self, now: float) -> float | None:
        """How long until :meth:`take` has something: 0 when it has now, None when the
        queue is empty (wait for an offer)."""
        if not self._slots:
            return None
        head = self._slots[0]
        if isinstance(head, Frame) or not self._interval or head.order < self._release_upto:
            return 0.0
        return max(0.0, self._next_flush - now)

    def clear(self) -> None:
        self._slots.clear()
        self._markets.clear()
        self._events.clear()
        self._pinned.clear()

    def __len__(self) -> int:
        return len(self._slots)
