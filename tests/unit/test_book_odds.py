"""The book's path for prices (``MarketBook._apply_odds``) against the generic rules it
replaced: a reference built from ``_diff`` and ``protocol.apply``, the way every other
feed message is applied. Same delta, same book, same refusals, message after message."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from feeds.book import (
    _FEED_PRICE_DATA,
    Books,
    FeedRejected,
    _check_market_data,
    _check_price,
    _check_volume,
    _diff,
    _refuse_duplicates,
)
from feeds.model import FeedMarket, FeedMessage, FeedOdds, FeedSelection
from protocol import FINAL_MARKET_STATES, UNSET, Delta, SelectionChange, Snapshot
from tests.unit.test_book import (
    MARKET,
    MARKETS,
    SELECTIONS,
    book,
    books_after,
    definition,
    definitions,
    feed_messages,
    new_epoch,
    odds,
    odds_messages,
    price,
)


def reference(current: Snapshot, message: FeedOdds) -> tuple[Delta | None, Snapshot]:
    """The generic rules for a price message: the delta and the book after it. Raises
    :class:`FeedRejected` like the book."""
    market_id = current.market_id
    if message.event_id != current.event_id:
        raise FeedRejected("event_mismatch", "")
    if current.status in FINAL_MARKET_STATES:
        raise FeedRejected("market_final", "")
    if current.status == "closed":
        raise FeedRejected("market_closed", "")
    known = {s.selection_id: s for s in current.selections}
    _refuse_duplicates([p.selection_id for p in message.prices], market_id)
    changes: list[SelectionChange] = []
    for fp in message.prices:
        _check_price(fp.price, market_id, fp.selection_id)
        old = known.get(fp.selection_id)
        if old is None:
            raise FeedRejected("unknown_selection", "")
        updates: dict[str, object] = {"price": fp.price}
        if fp.status is not None:
            updates["status"] = fp.status
        for field in _FEED_PRICE_DATA:
            value = getattr(fp, field)
            if value is not UNSET:
                updates[field] = value
        change = _diff(old, msgspec.structs.replace(old, **updates))
        if change is not None:
            _check_market_data(change, market_id, fp.selection_id)
            changes.append(change)
    _check_volume(message.volume, market_id, "market")
    volume = message.volume
    new_volume = UNSET if volume is UNSET or volume == current.volume else volume
    if not changes and new_volume is UNSET:
        return None, current
    delta = Delta(
        market_id=market_id,
        event_id=current.event_id,
        seq=current.seq + 1,
        epoch=current.epoch,
        ts=message.ts,
        selections=tuple(changes),
        volume=new_volume,
    )
    after = protocol.apply(current, delta)
    crc = protocol.checksum(after)  # In full: the book keeps it incrementally.
    return msgspec.structs.replace(delta, crc=crc), msgspec.structs.replace(after, crc=crc)


def assert_like_reference(books: Books, message: FeedOdds) -> None:
    before = books.markets[message.market_id].snapshot
    reason: str | None = None
    try:
        delta, after = reference(before, message)
    except FeedRejected as exc:
        reason = exc.reason
    if reason is not None:
        with pytest.raises(FeedRejected) as refused:
            books.apply(message)
        assert refused.value.reason == reason
        assert books.markets[message.market_id].snapshot is before
        return
    out = books.apply(message)
    assert out == delta
    now = books.markets[message.market_id].snapshot
    assert now == after
    assert protocol.encode(now) == protocol.encode(after)
    if delta is None:
        assert now is before


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(*(definitions(m) for m in sorted(MARKETS))),
    st.lists(feed_messages(), min_size=5, max_size=40),
    st.lists(odds_messages(), min_size=1, max_size=10),
)
def test_prices_apply_exactly_as_the_generic_rules(
    opening: tuple[FeedMarket, ...], messages: list[FeedMessage], probes: list[FeedOdds]
) -> None:
    """Whatever state the feed left a market in (its selections redefined, closed,
    settled...), every price message does what the generic rules do."""
    books = Books(new_epoch)
    for message in [*opening, *messages, *probes]:
        if isinstance(message, FeedOdds) and message.market_id in books.markets:
            assert_like_reference(books, message)
            continue
        with contextlib.suppress(FeedRejected):
            books.apply(message)


@pytest.mark.parametrize(
    "message",
    [
        odds(price("home", "2.10")),  # Same price: nothing.
        odds(price("home", "2.1")),  # Same value in another form: nothing either.
        odds(price("home", "2.20")),
        odds(price("home", "2.20"), price("draw", "3.50")),
        odds(price("home", "2.20"), price("home", "2.30")),  # Repeated: refused.
        odds(price("home", "2.20"), price("draw", "3.50"), price("draw", "3.60")),
        odds(price("nobody", "2.20")),
        odds(price("home", "1.00")),
        odds(price("home", None)),
        odds(price("home", "2.10", status="removed")),
        odds(price("home", "2.10", status="active")),
        odds(price("home", "2.20", ltp=Decimal("2.18"), back=((Decimal("2.2"), Decimal(5)),))),
        odds(price("home", "2.20", back=((Decimal("2.2"), Decimal(0)),))),
        odds(price("home", "2.10", volume=None)),
        FeedOdds("fb-0001", MARKET, 1, (), volume=Decimal(100)),
        FeedOdds("fb-0001", MARKET, 1, (), volume=Decimal(-1)),
        FeedOdds("fb-0002", MARKET, 1, (price("home", "2.20"),)),
    ],
)
def test_price_cases(message: FeedOdds) -> None:
    books = books_after()
    assert_like_reference(books, message)
    # Twice: the second time from the book the first one left.
    assert_like_reference(books, message)


def test_positions_follow_a_redefinition() -> None:
    """A definition that adds a selection: prices for it apply at once."""
    books = books_after(odds(price("home", "2.20")))
    books.apply(definition(selections=(*SELECTIONS, FeedSelection("other", "Other"))))
    assert_like_reference(books, odds(price("other", "9.00")))
    assert book(books).selections[-1].price == Decimal("9.00")
