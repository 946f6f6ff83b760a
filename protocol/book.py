"""Client-side book rebuilding: apply a delta to a snapshot, checking ``seq``, ``epoch`` and
the book checksum.

Clients (and tests) use this instead of re-implementing the rules; the server's gateway
cache uses it too, so both sides agree by construction.
"""

from __future__ import annotations

import msgspec

from protocol.checksum import checksum
from protocol.errors import ApplyError
from protocol.types import SELECTION_FIELDS, UNSET, Delta, Selection, SelectionChange, Snapshot


def apply(snapshot: Snapshot, delta: Delta) -> Snapshot:
    """Return the book after ``delta``; ``snapshot`` is not modified.

    Raises :class:`ApplyError` unless ``delta`` is for the same market and epoch and its
    ``seq`` is exactly ``snapshot.seq + 1``, and, when ``delta`` carries a ``crc``, the
    book after it has that checksum (reason ``checksum``: the book was already wrong, or
    the delta does not fit it). On that error the caller must not guess: it takes a fresh
    snapshot (or resumes, except after ``checksum``) for this market. The new book carries
    the delta's ``crc`` (none when the delta has none).
    """
    if delta.market_id != snapshot.market_id:
        raise ApplyError("market", f"delta for {delta.market_id} applied to {snapshot.market_id}")
    if delta.epoch != snapshot.epoch:
        raise ApplyError(
            "epoch", f"{delta.market_id}: epoch {delta.epoch} does not match {snapshot.epoch}"
        )
    if delta.seq <= snapshot.seq:
        raise ApplyError(
            "stale", f"{delta.market_id}: seq {delta.seq} already applied (at {snapshot.seq})"
        )
    if delta.seq != snapshot.seq + 1:
        raise ApplyError(
            "gap", f"{delta.market_id}: expected seq {snapshot.seq + 1}, got {delta.seq}"
        )
    selections = apply_selection_changes(snapshot.selections, delta.selections)
    book = Snapshot(
        market_id=snapshot.market_id,
        event_id=snapshot.event_id,
        seq=delta.seq,
        epoch=snapshot.epoch,
        ts=delta.ts,
        sport=snapshot.sport,
        kind=snapshot.kind,
        name=snapshot.name if delta.name is UNSET else delta.name,
        status=snapshot.status if delta.status is UNSET else delta.status,
        selections=selections,
        main=snapshot.main if delta.main is UNSET else delta.main,
        reason=snapshot.reason if delta.reason is UNSET else delta.reason,
        volume=snapshot.volume if delta.volume is UNSET else delta.volume,
        crc=delta.crc,
    )
    if delta.crc is not None:
        verify(book)
    return book


def verify(snapshot: Snapshot) -> None:
    """Check a book against its ``crc`` (nothing to check without one).

    Raises :class:`ApplyError` with reason ``checksum`` when they differ: the book is
    wrong and the caller takes a fresh snapshot of the market.
    """
    if snapshot.crc is not None and (actual := checksum(snapshot)) != snapshot.crc:
        raise ApplyError(
            "checksum",
            f"{snapshot.market_id}: book at seq {snapshot.seq} has checksum {actual}, "
            f"not {snapshot.crc}",
        )


def apply_selection_changes(
    selections: tuple[Selection, ...], changes: tuple[SelectionChange, ...]
) -> tuple[Selection, ...]:
    """Merge selection changes into a selection list, keeping order; new ones append."""
    if not changes:
        return selections
    by_id = {c.selection_id: c for c in changes}
    out: list[Selection] = []
    for sel in selections:
        change = by_id.pop(sel.selection_id, None)
        out.append(sel if change is None else _merge(sel, change))
    for change in by_id.values():
        base = Selection(selection_id=change.selection_id, name=change.selection_id)
        out.append(_merge(base, change))
    return tuple(out)


def _merge(sel: Selection, change: SelectionChange) -> Selection:
    updates = {}
    for name in SELECTION_FIELDS:
        value = getattr(change, name)
        if value is not UNSET:
            updates[name] = value
    return msgspec.structs.replace(sel, **updates) if updates else sel


def as_reset(snapshot: Snapshot) -> Snapshot:
    """The same snapshot flagged ``reset`` (sent when a stream could not be resumed)."""
    return msgspec.structs.replace(snapshot, reset=True)
