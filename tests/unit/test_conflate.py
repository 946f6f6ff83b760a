"""Market-aware conflation (channels.conflate), driven by real books and deltas."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from channels.conflate import ConflationStats, Conflator, is_state_change
from channels.frame import Frame
from feeds.book import Books
from feeds.model import FeedEvent, FeedMarket, FeedMarketStatus, FeedOdds, FeedPrice, FeedSelection
from protocol import Ack, Delta, EventState, Heartbeat, Snapshot

T0 = 1_700_000_000_000


class Market:
    """An authoritative feed + book per market, like a gateway's relay: ``book_of``
    returns the book after the last frame made."""

    def __init__(self) -> None:
        self.books = Books(lambda market_id: "e1")
        self.ts = T0
        self.history: dict[str, dict[int, Snapshot]] = {}
        self.event_seq = 0

    def create(self, market_id: str) -> Frame:
        out = self.books.apply(
            FeedMarket(
                event_id="ev",
                market_id=market_id,
                ts=self._ts(),
                sport="football",
                market_kind="1x2",
                name="Match result",
                selections=(
                    FeedSelection("home", "Home", Decimal("2.00")),
                    FeedSelection("away", "Away", Decimal("3.00")),
                ),
            )
        )
        assert isinstance(out, Snapshot)
        return self._record(out)

    def price(self, market_id: str, home: str) -> Frame:
        out = self.books.apply(
            FeedOdds(
                event_id="ev",
                market_id=market_id,
                ts=self._ts(),
                prices=(FeedPrice("home", Decimal(home)),),
            )
        )
        assert isinstance(out, Delta)
        return self._record(out)

    def status(self, market_id: str, status: str, reason: str | None = None) -> Frame:
        out = self.books.apply(
            FeedMarketStatus(
                event_id="ev",
                market_id=market_id,
                ts=self._ts(),
                status=status,  # type: ignore[arg-type]
                reason=reason,
            )
        )
        assert isinstance(out, Delta)
        return self._record(out)

    def event(self, minute: int) -> Frame:
        out = self.books.apply(
            FeedEvent(
                event_id="ev",
                ts=self._ts(),
                sport="football",
                competition="L",
                home="Home",
                away="Away",
                start_time=T0,
                phase="live",
                score=(minute, 0),
            )
        )
        assert isinstance(out, EventState)
        return Frame(out)

    def book(self, market_id: str) -> Snapshot:
        return self.books.markets[market_id].snapshot

    def book_of(self, market_id: str) -> Snapshot | None:
        book = self.books.markets.get(market_id)
        return None if book is None else book.snapshot

    def _ts(self) -> int:
        self.ts += 1
        return self.ts

    def _record(self, message: Snapshot | Delta) -> Frame:
        book = self.book(message.market_id)
        self.history.setdefault(message.market_id, {})[book.seq] = book
        return Frame(message)


class Client:
    """Applies what it receives exactly as a client does (protocol.apply)."""

    def __init__(self) -> None:
        self.books: dict[str, Snapshot] = {}
        self.seen: dict[str, list[Snapshot]] = {}
        self.messages: list[protocol.ServerMessage] = []

    def receive(self, frames: list[Frame]) -> None:
        for frame in frames:
            # The bytes on the wire are what counts.
            message = protocol.decode_server(frame.json)
            self.messages.append(message)
            if isinstance(message, Snapshot):
                book = msgspec.structs.replace(message, reset=False)
            elif isinstance(message, Delta):
                book = protocol.apply(self.books[message.market_id], message)
            else:
                continue
            self.books[message.market_id] = book
            self.seen.setdefault(message.market_id, []).append(book)


def conflator(market: Market, soft: int = 0, hard: int = 100, **kwargs: object) -> Conflator:
    return Conflator(soft_limit=soft, hard_limit=hard, book_of=market.book_of, **kwargs)  # type: ignore[arg-type]


def kinds(messages: list[protocol.ServerMessage]) -> list[tuple[str, str, int]]:
    out = []
    for m in messages:
        if isinstance(m, Snapshot | Delta):
            out.append((type(m).__name__, m.market_id, m.seq))
        else:
            out.append((type(m).__name__, "", 0))
    return out


# -- keeping up ------------------------------------------------------------------------------


def test_a_client_that_keeps_up_gets_every_shared_frame_unchanged() -> None:
    market = Market()
    queue = conflator(market, soft=8)
    frames = [market.create("m1"), *(market.price("m1", f"2.{i:02d}") for i in range(1, 6))]
    for frame in frames:
        assert queue.offer(frame)
    taken = queue.take(0.0, 100)
    assert [id(f) for f in taken] == [id(f) for f in frames], "same objects: encoded once"
    assert queue.stats == ConflationStats()


# -- behind ------------------------------------------------------------------------------------


def test_price_moves_of_a_client_behind_fold_into_one_exact_snapshot() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1")])
    for i in range(1, 30):
        assert queue.offer(market.price("m1", f"2.{i:02d}"))
    assert len(queue) == 1
    client.receive(queue.take(0.0, 100))
    assert kinds(client.messages[1:]) == [("Snapshot", "m1", 30)]
    snapshot = client.messages[-1]
    assert isinstance(snapshot, Snapshot) and not snapshot.reset
    assert client.books["m1"] == market.book("m1")
    assert queue.stats.merged == 28 and queue.stats.snapshots == 1


def test_a_single_queued_delta_goes_out_as_the_shared_delta() -> None:
    market = Market()
    queue = conflator(market)
    market.create("m1")
    frame = market.price("m1", "2.50")
    queue.offer(frame)
    assert queue.take(0.0, 10) == [frame]


def test_two_state_changes_are_never_merged_and_keep_their_order() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1")])
    queue.offer(market.price("m1", "2.10"))
    queue.offer(market.status("m1", "suspended", "goal"))  # Folds into the price slot.
    queue.offer(market.price("m1", "2.20"))  # A price while suspended: same slot.
    queue.offer(market.status("m1", "open"))  # A second state change: its own slot.
    queue.offer(market.price("m1", "1.90"))
    queue.offer(market.status("m1", "suspended", "var"))  # Third: its own slot.
    client.receive(queue.take(0.0, 100))
    statuses = [(b.status, b.reason, b.seq) for b in client.seen["m1"][1:]]
    assert statuses == [("suspended", "goal", 4), ("open", None, 6), ("suspended", "var", 7)]
    assert client.books["m1"] == market.book("m1")
    assert client.seen["m1"][1].selections[0].price == Decimal("2.20")


def test_a_suspension_overtakes_queued_prices_of_other_markets() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1"), market.create("m2")])
    queue.offer(market.price("m1", "2.10"))
    for i in range(10):
        queue.offer(market.price("m2", f"3.{i:02d}"))
    queue.offer(Frame(Ack(command="ping")))
    queue.offer(market.status("m1", "suspended", "goal"))
    client.receive(queue.take(0.0, 100))
    # m1's suspension leaves at the place of m1's first queued price, ahead of m2.
    assert kinds(client.messages[2:]) == [
        ("Snapshot", "m1", 3),
        ("Snapshot", "m2", 11),
        ("Ack", "", 0),
    ]
    assert client.books["m1"].status == "suspended"
    assert client.books == {"m1": market.book("m1"), "m2": market.book("m2")}


def test_control_frames_keep_their_place() -> None:
    market = Market()
    queue = conflator(market)
    market.create("m1")
    ack, heartbeat = Frame(Ack(command="subscribe")), Frame(Heartbeat(ts=1))
    queue.offer(ack)
    queue.offer(market.price("m1", "2.10"))
    queue.offer(heartbeat)
    queue.offer(market.price("m1", "2.20"))
    taken = queue.take(0.0, 100)
    assert taken[0] is ack and taken[2] is heartbeat and len(taken) == 3


def test_a_delta_whose_book_the_node_no_longer_holds_is_queued_unmerged() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1")])
    first = market.price("m1", "2.10")
    second = market.price("m1", "2.20")
    market.price("m1", "2.30")  # The node moved on: no book stands for `second`.
    queue.offer(first)
    queue.offer(second)
    taken = queue.take(0.0, 100)
    assert taken == [first, second]
    client.receive(taken)
    assert client.books["m1"].seq == 3


def test_pin_makes_the_next_message_of_a_market_go_out_as_it_is() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1")])
    queue.offer(market.price("m1", "2.05"))
    queue.pin("m1")
    resumed = market.price("m1", "2.10")
    queue.offer(resumed)
    queue.offer(market.price("m1", "2.20"))
    queue.offer(market.price("m1", "2.30"))
    taken = queue.take(0.0, 100)
    assert taken[1] is resumed, "the pinned delta is neither merged nor merged into"
    client.receive(taken)
    assert kinds(client.messages[1:]) == [
        ("Delta", "m1", 2),
        ("Delta", "m1", 3),
        ("Snapshot", "m1", 5),
    ]
    assert client.books["m1"] == market.book("m1")


def test_a_reset_snapshot_keeps_its_flag_when_later_prices_fold_into_it() -> None:
    market = Market()
    queue = conflator(market)
    market.create("m1")
    reset = protocol.as_reset(market.book("m1"))
    queue.offer(Frame(reset))
    queue.offer(market.price("m1", "2.10"))
    (out,) = queue.take(0.0, 10)
    assert isinstance(out.message, Snapshot)
    assert out.message.reset and out.message.seq == 2
    assert msgspec.structs.replace(out.message, reset=False) == market.book("m1")


def test_event_states_fold_to_the_latest() -> None:
    market = Market()
    queue = conflator(market)
    first = market.event(1)
    queue.offer(first)
    queue.offer(market.event(2))
    latest = market.event(3)
    queue.offer(latest)
    assert queue.take(0.0, 10) == [latest]
    assert queue.stats.events_merged == 2


def test_past_the_hard_limit_offer_refuses() -> None:
    market = Market()
    queue = conflator(market, soft=2, hard=4)
    for m in ("m1", "m2", "m3", "m4"):
        market.create(m)
        assert queue.offer(Frame(market.book(m)))
    assert not queue.offer(Frame(Ack(command="ping")))
    assert queue.offer(market.price("m4", "2.50")), "folding into m4's slot needs no room"
    assert not queue.offer(market.price("m1", "2.50")), "m1 was queued bare: a new slot"
    assert len(queue) == 4


def test_a_frame_queued_after_a_slot_stops_folding_into_that_slot() -> None:
    """Behind, then caught up (a bare frame queued after the slot), then behind again:
    a newer update must not fold into the slot ahead of the bare frame."""
    market = Market()
    queue = conflator(market, soft=2)
    client = Client()
    client.receive([market.create("m1"), market.create("m2")])
    queue.offer(market.price("m2", "3.10"))
    queue.offer(market.price("m2", "3.20"))
    queue.offer(market.price("m1", "2.10"))  # Behind: m1 gets a slot.
    client.receive(queue.take(0.0, 2))  # Caught up: only m1's slot is left.
    queue.offer(market.price("m1", "2.20"))  # Below the soft limit: queued bare.
    queue.offer(market.price("m1", "2.30"))  # Behind again: after the bare frame.
    client.receive(queue.take(0.0, 10))
    assert [b.seq for b in client.seen["m1"]] == [1, 2, 3, 4]
    assert client.books["m1"] == market.book("m1")


def test_updates_queued_while_keeping_up_are_never_folded_into() -> None:
    market = Market()
    queue = conflator(market, soft=2)
    client = Client()
    client.receive([market.create("m1")])
    first, second = market.price("m1", "2.10"), market.price("m1", "2.20")
    for frame in (first, second):  # Below the soft limit: queued bare.
        queue.offer(frame)
    for i in range(3, 9):  # Behind: a slot after them, absorbing the rest.
        queue.offer(market.price("m1", f"2.{i}0"))
    taken = queue.take(0.0, 100)
    assert taken[:2] == [first, second]
    client.receive(taken)
    assert kinds(client.messages[1:]) == [
        ("Delta", "m1", 2),
        ("Delta", "m1", 3),
        ("Snapshot", "m1", 9),
    ]
    assert client.books["m1"] == market.book("m1")


def test_take_respects_its_limit_and_leaves_the_rest_mergeable() -> None:
    market = Market()
    queue = conflator(market)
    client = Client()
    client.receive([market.create("m1"), market.create("m2")])
    queue.offer(market.price("m1", "2.10"))
    queue.offer(market.price("m2", "3.10"))
    client.receive(queue.take(0.0, 1))
    queue.offer(market.price("m2", "3.20"))
    queue.offer(market.price("m1", "2.20"))
    client.receive(queue.take(0.0, 10))
    assert kinds(client.messages[2:]) == [
        ("Delta", "m1", 2),
        ("Snapshot", "m2", 3),
        ("Delta", "m1", 3),
    ]
    assert client.books == {"m1": market.book("m1"), "m2": market.book("m2")}


@pytest.mark.parametrize(
    ("delta", "state"),
    [
        (Delta("m", "e", 2, "x", 1, status="suspended"), True),
        (Delta("m", "e", 2, "x", 1, reason="var"), True),
        (
            Delta(
                "m", "e", 2, "x", 1, selections=(protocol.SelectionChange("a", status="removed"),)
            ),
            True,
        ),
        (
            Delta(
                "m", "e", 2, "x", 1, selections=(protocol.SelectionChange("a", price=Decimal(2)),)
            ),
            False,
        ),
        (Delta("m", "e", 2, "x", 1, name="renamed", main=True), False),
    ],
)
def test_what_counts_as_a_state_change(delta: Delta, state: bool) -> None:
    assert is_state_change(delta) is state


# -- interval (conflate_ms) ------------------------------------------------------------------------


def test_interval_sends_at_most_one_update_per_market_per_flush() -> None:
    market = Market()
    queue = conflator(market, soft=50, interval_s=1.0)
    client = Client()
    client.receive([market.create("m1")])
    queue.offer(market.price("m1", "2.10"))
    client.receive(queue.take(10.0, 100))  # The first update after quiet goes at once.
    assert client.books["m1"].seq == 2
    for i in range(5):
        queue.offer(market.price("m1", f"2.2{i}"))
    ack = Frame(Ack(command="ping"))
    queue.offer(ack)
    assert queue.take(10.5, 100) == [], "held until the next flush (and the ack behind it)"
    assert queue.wait_s(10.5) == pytest.approx(0.5)
    client.receive(queue.take(11.0, 100))
    assert kinds(client.messages[1:]) == [("Delta", "m1", 2), ("Snapshot", "m1", 7), ("Ack", "", 0)]
    assert client.books["m1"] == market.book("m1")
    assert queue.wait_s(11.0) is None


def test_interval_releases_control_frames_at_once_when_nothing_is_ahead() -> None:
    market = Market()
    queue = conflator(market, interval_s=5.0)
    market.create("m1")
    queue.offer(market.price("m1", "2.10"))
    assert len(queue.take(0.0, 10)) == 1
    queue.offer(market.price("m1", "2.20"))
    assert queue.take(1.0, 10) == []
    queue.release_all()
    assert len(queue.take(1.0, 10)) == 1


def test_state_changes_within_an_interval_each_reach_the_client() -> None:
    market = Market()
    queue = conflator(market, interval_s=1.0)
    client = Client()
    client.receive([market.create("m1")])
    queue.offer(market.price("m1", "2.10"))
    client.receive(queue.take(0.0, 10))
    queue.offer(market.status("m1", "suspended", "goal"))
    queue.offer(market.status("m1", "open"))
    client.receive(queue.take(1.0, 10))
    assert [b.status for b in client.seen["m1"]] == ["open", "open", "suspended", "open"]


# -- the property -------------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["price", "price", "price", "suspend", "open", "take", "remove"]),
        st.integers(0, 2),
        st.integers(1, 99),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, soft=st.integers(0, 6), take=st.integers(1, 5))
def test_a_client_applying_what_it_receives_passes_only_through_true_books(
    ops: list[tuple[str, int, int]], soft: int, take: int
) -> None:
    """Whatever the timing: every book the client holds is the authoritative book at its
    seq, every state change is seen before the next one, and the end is exact."""
    market = Market()
    queue = conflator(market, soft=soft, hard=10_000)
    client = Client()
    ids = ["m0", "m1", "m2"]
    client.receive([market.create(m) for m in ids])
    changes: dict[str, list[int]] = {m: [] for m in ids}
    for op, i, n in ops:
        m = ids[i]
        if op == "take":
            client.receive(queue.take(0.0, take))
            continue
        frame = _change(market, m, op, n)
        if frame is not None:
            if is_state_change(frame.message):
                changes[m].append(market.book(m).seq)
            assert queue.offer(frame)
    client.receive(queue.take(0.0, 100_000))
    for m in ids:
        assert client.books[m] == market.book(m)
        seen = [b.seq for b in client.seen[m]]
        assert seen == sorted(set(seen)), "versions only move forward"
        for held in client.seen[m]:
            assert held == market.history[m][held.seq], "only true books"
        # Each state change is visible before the next one happens.
        ends = [*changes[m][1:], 1 << 30]
        for k, nxt in zip(changes[m], ends[: len(changes[m])], strict=True):
            assert any(k <= s < nxt for s in seen), f"{m}: state change at {k} merged away"


def _change(market: Market, m: str, op: str, n: int) -> Frame | None:
    """One real change of market ``m`` (None when ``op`` would change nothing)."""
    book = market.book(m)
    if op == "price":
        price = f"{2 + n / 100:.2f}"
        return None if book.selections[0].price == Decimal(price) else market.price(m, price)
    if op == "remove":
        if book.selections[1].status != "active":
            return None
        out = market.books.apply(
            FeedOdds(
                event_id="ev",
                market_id=m,
                ts=market._ts(),
                prices=(FeedPrice("away", None, "removed"),),
            )
        )
        assert isinstance(out, Delta)
        return market._record(out)
    status = "suspended" if op == "suspend" else "open"
    if book.status == status:
        return None
    return market.status(m, status, "goal" if op == "suspend" else None)
