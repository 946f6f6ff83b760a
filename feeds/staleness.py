"""Feed staleness (sans-I/O): suspend the markets of an event whose feed went silent.

A price is only as good as the feed behind it. When nothing at all has been heard about
an event for longer than ``stale_after_s`` (its producer is down, a feed connection
stalled), :meth:`StalenessGuard.suspensions` returns a ``suspended`` status change with
reason :data:`REASON` for each of its ``open`` markets; the caller applies them through
:meth:`feeds.book.Books.apply`, so they get seqs, deltas, storage and fan-out like any
feed change. When the feed speaks about the event again (:meth:`StalenessGuard.heard`
returns True), :meth:`StalenessGuard.reopenings` returns an ``open`` status change for
each market of the event that is *still* suspended for :data:`REASON`, to be applied
after the message that came back (so a market that message suspended for a goal stays
suspended, and prices it carries are in place before the market opens). Markets suspended
for any other reason, or closed meanwhile, are left alone.

Which markets the guard suspended is read from the books (status ``suspended`` with
reason :data:`REASON`, a reason only this guard gives), not remembered: a processor that
restores books after a crash or hand-over (:meth:`StalenessGuard.adopt`) reopens them
like the one that suspended them.

Events whose phase is ``ended`` are not watched: silence after the end is normal.
Time is passed in: ``now`` in seconds from any monotonic clock, ``ts`` the epoch
milliseconds stamped on the changes (the wall clock for a suspension, which no feed
message caused; the returning message's own ``ts`` for a reopening), never earlier than
the market's last change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from feeds.book import Books
from feeds.model import FeedMarketStatus
from protocol import EventState, Snapshot

#: The suspension reason the guard gives (and the only one it takes back).
REASON = "feed_stale"
#: Default bound (seconds) on the feed's silence about an event before its open markets
#: are suspended.
STALE_AFTER_S = 10.0


class StalenessGuard:
    """Tracks when each event was last heard of; see the module docstring."""

    __slots__ = ("_after", "_heard", "_stale")

    def __init__(self, stale_after_s: float):
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        self._after = stale_after_s
        self._heard: dict[str, float] = {}
        self._stale: set[str] = set()

    @property
    def stale_after_s(self) -> float:
        return self._after

    @property
    def stale(self) -> frozenset[str]:
        """Events whose markets the guard suspended and whose feed has not returned."""
        return frozenset(self._stale)

    def heard(self, event_id: str, now: float) -> bool:
        """The feed sent something about ``event_id``. True when the event was stale:
        apply the message, then :meth:`reopenings`."""
        self._heard[event_id] = now
        if event_id in self._stale:
            self._stale.discard(event_id)
            return True
        return False

    def suspensions(
        self,
        books: Books,
        now: float,
        ts: int,
        owned: Callable[[str], bool] | None = None,
    ) -> list[FeedMarketStatus]:
        """Status changes suspending the open markets of every event silent for longer
        than the bound (and owned, when ``owned`` is given). Each event is suspended
        once per silence."""
        due = [
            e
            for e, heard in self._heard.items()
            if now - heard > self._after and e not in self._stale and (owned is None or owned(e))
        ]
        if not due:
            return []
        by_event = _markets_by_event(books, due)
        out: list[FeedMarketStatus] = []
        for event_id in due:
            state = books.events.get(event_id)
            if state is not None and state.phase == "ended":
                del self._heard[event_id]
                continue
            self._stale.add(event_id)
            out += [
                FeedMarketStatus(
                    event_id=event_id,
                    market_id=snap.market_id,
                    ts=max(ts, snap.ts),
                    status="suspended",
                    reason=REASON,
                )
                for snap in by_event.get(event_id, ())
                if snap.status == "open"
            ]
        return out

    def reopenings(self, event_id: str, books: Books, ts: int) -> list[FeedMarketStatus]:
        """Status changes reopening the markets of ``event_id`` still suspended for
        :data:`REASON`, with their current prices."""
        return [
            FeedMarketStatus(
                event_id=event_id,
                market_id=snap.market_id,
                ts=max(ts, snap.ts),
                status="open",
            )
            for snap in _markets_by_event(books, (event_id,)).get(event_id, ())
            if snap.status == "suspended" and snap.reason == REASON
        ]

    def adopt(
        self, snapshots: Iterable[Snapshot], events: Iterable[EventState], now: float
    ) -> None:
        """Books restored from storage: their events count as heard ``now``, and those
        with markets suspended for :data:`REASON` as stale (their feed's return reopens
        them)."""
        for event in events:
            self._heard.setdefault(event.event_id, now)
        for snap in snapshots:
            self._heard.setdefault(snap.event_id, now)
            if snap.status == "suspended" and snap.reason == REASON:
                self._stale.add(snap.event_id)

    def watch(self, event_ids: Iterable[str], now: float) -> None:
        """Restart the silence of ``event_ids`` at ``now`` (the caller could not read
        their feed until now); a stale event stays stale until its feed speaks."""
        for event_id in event_ids:
            self._heard[event_id] = now

    def forget(self, event_ids: Iterable[str]) -> None:
        """Stop watching events (their partition went to another processor)."""
        for event_id in event_ids:
            self._heard.pop(event_id, None)
            self._stale.discard(event_id)


def _markets_by_event(books: Books, event_ids: Iterable[str]) -> dict[str, list[Snapshot]]:
    wanted = set(event_ids)
    out: dict[str, list[Snapshot]] = {}
    for book in books.markets.values():
        snap = book.snapshot
        if snap.event_id in wanted:
            out.setdefault(snap.event_id, []).append(snap)
    return out
