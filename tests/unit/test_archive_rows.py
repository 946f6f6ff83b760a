"""archive.rows: which rows a market message makes (pure, no database)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

import protocol
from archive.rows import Rows, Unstorable
from protocol import Delta, Selection, SelectionChange, Snapshot

KEY = ("m1", "e0", 7)

SNAPSHOT = Snapshot(
    market_id="m1",
    event_id="ev1",
    seq=7,
    epoch="e0",
    ts=1000,
    sport="football",
    kind="1x2",
    name="Match result",
    status="settled",
    selections=(
        Selection("1", "Home", Decimal("2.10"), "winner", dead_heat=Decimal("0.5")),
        Selection("2", "Away", Decimal("3.0"), "loser"),
        Selection("3", "Draw", None),
    ),
    main=True,
)


def rows_of(message: Snapshot | Delta) -> Rows:
    rows = Rows()
    assert rows.add(protocol.encode(message)) == message
    return rows


def delta(*changes: SelectionChange, **fields: object) -> Delta:
    return Delta(
        market_id="m1", event_id="ev1", seq=7, epoch="e0", ts=1000, selections=changes, **fields
    )  # type: ignore[arg-type]


def test_a_snapshot_makes_every_row_and_keeps_the_price_text() -> None:
    rows = rows_of(SNAPSHOT)
    assert rows.messages == [(*KEY, "snapshot", 1000, protocol.encode(SNAPSHOT))]
    assert list(rows.events.values()) == [("ev1", "football", 1000)]
    assert list(rows.markets.values()) == [("m1", "ev1", "football", "1x2", "Match result", 1000)]
    assert rows.changes == [(*KEY, 1000, "settled", None, "Match result", 1)]
    assert rows.prices == [
        (*KEY, "1", 1000, "2.10", "winner"),
        (*KEY, "2", 1000, "3.0", "loser"),
        (*KEY, "3", 1000, None, "active"),
    ]
    assert rows.results == [
        (*KEY, "1", "ev1", 1000, "winner", "0.5", None, 0),
        (*KEY, "2", "ev1", 1000, "loser", None, None, 0),
    ]


@pytest.mark.parametrize(
    ("change", "prices", "results"),
    [
        (SelectionChange("1", price=Decimal("1.50")), [("1", 1000, "1.50", None)], []),
        (SelectionChange("1", price=None), [("1", 1000, None, None)], []),
        (
            SelectionChange("1", status="winner", dead_heat=Decimal("0.5")),
            [("1", 1000, None, "winner")],
            [("1", "ev1", 1000, "winner", "0.5", None, 0)],
        ),
        (
            SelectionChange("1", status="active"),  # a rollback of a result
            [("1", 1000, None, "active")],
            [("1", "ev1", 1000, "active", None, None, 1)],
        ),
        (
            SelectionChange("4", name="New", status="active"),  # a new selection
            [("4", 1000, None, "active")],
            [],
        ),
        (
            SelectionChange("1", void_factor=Decimal("0.25")),  # a factor alone
            [],
            [("1", "ev1", 1000, None, None, "0.25", 0)],
        ),
        (SelectionChange("1", back=((Decimal("2"), Decimal("5")),)), [], []),
    ],
)
def test_a_deltas_selection_changes(
    change: SelectionChange, prices: list[tuple[object, ...]], results: list[tuple[object, ...]]
) -> None:
    rows = rows_of(delta(change))
    assert rows.prices == [(*KEY, *p) for p in prices]
    assert rows.results == [(*KEY, *r) for r in results]
    assert rows.changes == []
    assert rows.messages[0][:4] == (*KEY, "delta")


def test_a_deltas_market_change() -> None:
    rows = rows_of(delta(status="suspended", reason="bet_stop"))
    assert rows.changes == [(*KEY, 1000, "suspended", "bet_stop", None, None)]
    assert rows_of(delta(main=False)).changes == [(*KEY, 1000, None, None, None, 0)]


def test_not_a_market_message_is_refused_and_collects_nothing() -> None:
    rows = Rows()
    with pytest.raises(msgspec.DecodeError):
        rows.add(b'{"type":"heartbeat","ts":1}')
    with pytest.raises(msgspec.DecodeError):
        rows.add(b"not json")
    assert (rows.count, rows.messages) == (0, [])


@pytest.mark.parametrize(
    "message",
    [
        msgspec.structs.replace(SNAPSHOT, market_id="m" * 129),
        msgspec.structs.replace(SNAPSHOT, sport="s" * 65),
        msgspec.structs.replace(SNAPSHOT, selections=(Selection("1", "n" * 256),)),
        delta(SelectionChange("1", price=Decimal("1." + "1" * 40))),
        delta(reason="r" * 256),
    ],
)
def test_a_field_wider_than_its_column_is_refused(message: Snapshot | Delta) -> None:
    rows = Rows()
    with pytest.raises(Unstorable):
        rows.add(protocol.encode(message))
    assert (rows.count, rows.messages) == (0, [])
