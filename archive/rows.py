"""Market messages into archive rows: pure, no I/O (``docs/data.md`` names the tables).

:class:`Rows` collects the rows of a batch of messages of the ``deltas`` topic, one list
per table, in the column order of the ``INSERT`` statements in :mod:`archive.writer`.
Every history row is keyed by ``(market_id, epoch, seq)`` (and ``selection_id``), so the
same message collected twice makes the same rows, which the writer stores once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

import msgspec

from protocol import UNSET, Delta, Snapshot, UnsetType

#: Selection states that are a result (settlement, cancellation, withdrawal).
RESULT_STATES: frozenset[str] = frozenset({"winner", "loser", "void", "removed"})

Row = tuple[object, ...]
T = TypeVar("T")

_decode = msgspec.json.Decoder(Snapshot | Delta).decode


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


#: The widths of the text columns (archive/migrations), in characters.
ID, EPOCH, LABEL, NAME, NUMBER = 128, 64, 64, 255, 40


class Unstorable(ValueError):
    """A market message with a field wider than its column: storing it would fail the
    whole batch (strict SQL mode), and again on every retry."""


def _check(message: Snapshot | Delta) -> None:
    texts: list[tuple[object, int]] = [
        (message.market_id, ID),
        (message.event_id, ID),
        (message.epoch, EPOCH),
        (_given(message.name), NAME),
        (_given(message.reason), NAME),
    ]
    if isinstance(message, Snapshot):
        texts += [(message.sport, LABEL), (message.kind, LABEL)]
    for c in message.selections:
        texts += [(c.selection_id, ID), (_given(c.name), NAME)]
        texts += [(_given(c.price), NUMBER), (_given(c.dead_heat), NUMBER)]
        texts.append((_given(c.void_factor), NUMBER))
    for value, width in texts:
        if value is not None and len(str(value)) > width:
            raise Unstorable(f"{str(value)[:40]!r}... is longer than {width} characters")


def _given(value: T | UnsetType | None) -> T | None:
    """A delta's field: ``None`` when absent (unchanged) or set to null."""
    return None if value is UNSET else value


@dataclass(slots=True)
class Rows:
    """The rows of a batch of market messages, per table."""

    events: dict[str, Row] = field(default_factory=dict)
    """First definitions, by id (the database keeps the first one it stored)."""
    markets: dict[str, Row] = field(default_factory=dict)
    selections: dict[tuple[str, str], Row] = field(default_factory=dict)
    messages: list[Row] = field(default_factory=list)
    changes: list[Row] = field(default_factory=list)
    prices: list[Row] = field(default_factory=list)
    results: list[Row] = field(default_factory=list)
    count: int = 0
    """Messages collected."""

    def add(self, payload: bytes) -> Snapshot | Delta:
        """Collect the rows of one message of the ``deltas`` topic (its JSON bytes).

        Raises :class:`msgspec.DecodeError` for a payload that is not a market message,
        :class:`Unstorable` for one the columns cannot hold (nothing is collected then);
        the caller decides what to do with it."""
        message = _decode(payload)
        _check(message)
        key = (message.market_id, message.epoch, message.seq)
        kind = "snapshot" if isinstance(message, Snapshot) else "delta"
        self.messages.append((*key, kind, message.ts, payload))
        self.count += 1
        if isinstance(message, Snapshot):
            self._snapshot(message, key)
        else:
            self._delta(message, key)
        return message

    def _snapshot(self, m: Snapshot, key: tuple[str, str, int]) -> None:
        self.events.setdefault(m.event_id, (m.event_id, m.sport, m.ts))
        self.markets.setdefault(
            m.market_id, (m.market_id, m.event_id, m.sport, m.kind, m.name, m.ts)
        )
        self.changes.append((*key, m.ts, m.status, m.reason, m.name, int(m.main)))
        for s in m.selections:
            self.selections.setdefault(
                (m.market_id, s.selection_id), (m.market_id, s.selection_id, s.name)
            )
            self.prices.append((*key, s.selection_id, m.ts, _text(s.price), s.status))
            if s.status in RESULT_STATES or s.dead_heat is not None or s.void_factor is not None:
                factors = (_text(s.dead_heat), _text(s.void_factor))
                self.results.append((*key, s.selection_id, m.event_id, m.ts, s.status, *factors, 0))

    def _delta(self, m: Delta, key: tuple[str, str, int]) -> None:
        changed = (_given(m.status), _given(m.reason), _given(m.name), _given(m.main))
        if changed != (None, None, None, None):
            status, reason, name, main = changed
            self.changes.append(
                (*key, m.ts, status, reason, name, None if main is None else int(main))
            )
        for c in m.selections:
            if c.name is not UNSET:
                self.selections.setdefault(
                    (m.market_id, c.selection_id), (m.market_id, c.selection_id, c.name)
                )
            status = _given(c.status)
            if c.price is not UNSET or status is not None:
                self.prices.append((*key, c.selection_id, m.ts, _text(_given(c.price)), status))
            # A known selection back to ``active`` (from a result) is a rollback: a row
            # of its own; the result it undoes stays.
            rollback = status == "active" and c.name is UNSET
            factors = c.dead_heat is not UNSET or c.void_factor is not UNSET
            if status in RESULT_STATES or rollback or factors:
                dead_heat, void_factor = _given(c.dead_heat), _given(c.void_factor)
                self.results.append(
                    (
                        *key,
                        c.selection_id,
                        m.event_id,
                        m.ts,
                        status,
                        _text(dead_heat),
                        _text(void_factor),
                        int(rollback),
                    )
                )
