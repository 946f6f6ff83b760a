"""What a book processor may forget, and when (sans-I/O).

A match day creates thousands of markets that settle and hundreds of events that end; a
processor that kept them all would grow all day. :class:`Retention` says which to forget:
a market ``retention_s`` after the step that made it ``settled`` or ``voided``, an ended
event (with every market of it) ``retention_s`` after the step that ended it; any later
change starts the clock again or stops it (a rollback). Time is the caller's monotonic
clock, passed in.

A forgotten book is still in storage, which holds everything the book held (a book is
forgotten long after its last step was stored, and nothing changes it meanwhile). A
message about it is applied after the processor restores it from there
(:class:`Lookup` says what to read, :func:`recall` reads it), so the outcome is the one
the processor would have given had it never forgotten. See docs/guarantees.md, "Bounded
memory through a match day".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from channels.store import Store
from protocol import EventState, Snapshot

#: Default seconds a settled or voided market, or an ended event, is kept after that step.
RETENTION_S = 600.0
#: Default seconds the Redis keys of an ended event live after its last write.
FINISHED_TTL_S = 86_400.0


class Retention:
    """Final markets and ended events in the order they became so, with when."""

    __slots__ = ("_after", "_events", "_markets")

    def __init__(self, retention_s: float):
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s}")
        self._after = retention_s
        # Insertion order is time order (the clock is monotonic and a re-noted key is
        # moved to the end), so what is due is always at the front.
        self._markets: dict[str, float] = {}
        self._events: dict[str, float] = {}

    def market(self, market_id: str, final: bool, now: float) -> None:
        """A market changed at ``now``; ``final``: it is settled or voided."""
        _note(self._markets, market_id, final, now)

    def event(self, event_id: str, ended: bool, now: float) -> None:
        """An event changed at ``now``; ``ended``: its phase is ``ended``."""
        _note(self._events, event_id, ended, now)

    def due(self, now: float) -> tuple[list[str], list[str]]:
        """The markets and events to forget at ``now``, no longer tracked here."""
        return _due(self._markets, now - self._after), _due(self._events, now - self._after)

    def drop(self, market_ids: Iterable[str] = (), event_ids: Iterable[str] = ()) -> None:
        """Stop tracking these (their books were dropped for another reason)."""
        for m in market_ids:
            self._markets.pop(m, None)
        for e in event_ids:
            self._events.pop(e, None)

    def __len__(self) -> int:
        return len(self._markets) + len(self._events)


def _note(times: dict[str, float], key: str, tracked: bool, now: float) -> None:
    times.pop(key, None)
    if tracked:
        times[key] = now


def _due(times: dict[str, float], cutoff: float) -> list[str]:
    due = []
    for key, at in times.items():
        if at > cutoff:
            break
        due.append(key)
    for key in due:
        del times[key]
    return due


@dataclass(slots=True)
class Lookup:
    """What a step needs from storage before it can go on from record ``resume``."""

    resume: int
    events: set[str] = field(default_factory=set)
    """Events the processor does not hold: their state and every market of theirs."""
    markets: dict[str, str] = field(default_factory=dict)
    """Forgotten markets of events the processor holds, with their event."""


@dataclass(frozen=True, slots=True)
class Recalled:
    """What storage holds for a :class:`Lookup`."""

    events: dict[str, EventState | None]
    """Each looked-up event's state (None when storage has none)."""
    snapshots: list[Snapshot]
    markets: dict[str, str]
    """The forgotten markets looked up (found or not), with their event."""


async def recall(store: Store, lookup: Lookup, held: Iterable[str]) -> Recalled:
    """Read what ``lookup`` names from ``store``; ``held`` are the markets the processor
    holds (not read again). Raises what the store raises."""
    held_ids = set(held)
    events: dict[str, EventState | None] = {}
    wanted = set(lookup.markets)
    for event_id in sorted(lookup.events):
        events[event_id] = await store.event(event_id)
        wanted.update(await store.market_ids(event_id))
    wanted -= held_ids
    snapshots = await store.snapshots(sorted(wanted)) if wanted else []
    return Recalled(events, snapshots, dict(lookup.markets))
