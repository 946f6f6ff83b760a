"""Feed staleness: the guard (feeds.staleness) through the pure processor, clock injected."""

from __future__ import annotations

from decimal import Decimal

import pytest

import protocol
from feeds.model import (
    FeedEvent,
    FeedMarket,
    FeedMarketStatus,
    FeedMessage,
    FeedOdds,
    FeedPrice,
    FeedSelection,
    encode_feed,
    topic_of,
)
from feeds.processor import FeedRecord, Processor, Step
from feeds.staleness import REASON, StalenessGuard
from protocol import Delta, Snapshot

T0 = 1_700_000_000_000
WALL = 1_800_000_000_000


class Pipe:
    """A processor fed by hand, with a fake monotonic clock."""

    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.processor = Processor(lambda m: "ep", stale_after_s=stale_after_s)
        self.offset = 0
        self.now = 0.0

    def send(self, *messages: FeedMessage, at: float | None = None) -> Step:
        if at is not None:
            self.now = at
        records = []
        for m in messages:
            records.append(FeedRecord(topic_of(m), 0, self.offset, encode_feed(m)))
            self.offset += 1
        return self.processor.process(records, now=self.now)

    def tick(self, at: float, owned: object = None) -> Step:
        self.now = at
        return self.processor.tick(at, WALL, owned)  # type: ignore[arg-type]

    def book(self, market_id: str) -> Snapshot:
        return self.processor.books.markets[market_id].snapshot


def event(event_id: str = "ev", phase: str = "live", ts: int = T0) -> FeedEvent:
    return FeedEvent(
        event_id=event_id,
        ts=ts,
        sport="football",
        competition="L",
        home="H",
        away="A",
        start_time=T0,
        phase=phase,  # type: ignore[arg-type]
    )


def market(market_id: str, event_id: str = "ev", status: str = "open") -> FeedMarket:
    return FeedMarket(
        event_id=event_id,
        market_id=market_id,
        ts=T0,
        sport="football",
        market_kind="1x2",
        name=market_id,
        status=status,  # type: ignore[arg-type]
        selections=(
            FeedSelection("home", "H", Decimal("2.00")),
            FeedSelection("away", "A", Decimal("3.00")),
        ),
    )


def odds(market_id: str, home: str, ts: int, event_id: str = "ev") -> FeedOdds:
    return FeedOdds(
        event_id=event_id,
        market_id=market_id,
        ts=ts,
        prices=(FeedPrice("home", Decimal(home)),),
    )


def status(market_id: str, value: str, reason: str | None, ts: int) -> FeedMarketStatus:
    return FeedMarketStatus(
        event_id="ev",
        market_id=market_id,
        ts=ts,
        status=value,  # type: ignore[arg-type]
        reason=reason,
    )


def deltas(step: Step) -> list[Delta]:
    out = []
    for _, payload in step.deltas:
        message = protocol.decode_server(payload)
        assert isinstance(message, Delta)
        out.append(message)
    return out


def setup() -> Pipe:
    pipe = Pipe()
    pipe.send(
        event(),
        market("ev:open"),
        market("ev:goal"),
        market("ev:closed"),
        status("ev:goal", "suspended", "goal", T0 + 1),
        status("ev:closed", "closed", None, T0 + 2),
        at=100.0,
    )
    return pipe


def test_silence_up_to_the_bound_changes_nothing() -> None:
    pipe = setup()
    assert not pipe.tick(110.0).publications, "exactly the bound is not stale yet"


def test_silence_past_the_bound_suspends_only_the_open_markets_once() -> None:
    pipe = setup()
    step = pipe.tick(110.5)
    (suspension,) = deltas(step)
    assert suspension == Delta(
        market_id="ev:open",
        event_id="ev",
        seq=2,
        epoch="ep",
        ts=WALL,
        status="suspended",
        reason=REASON,
        crc=protocol.checksum(pipe.book("ev:open")),
    )
    # Stored and published like any change: snapshot, history, channels.
    assert step.batch.snapshots["ev:open"] == pipe.book("ev:open")
    assert [(m, s) for m, s, _ in step.batch.history] == [("ev:open", 2)]
    assert not step.batch.offsets, "no feed offset moves"
    assert pipe.book("ev:goal").reason == "goal"
    assert pipe.book("ev:closed").status == "closed"
    assert not pipe.tick(200.0).publications, "one suspension per silence"


def test_the_feed_returning_reopens_what_the_guard_suspended_with_current_prices() -> None:
    pipe = setup()
    pipe.tick(111.0)
    step = pipe.send(odds("ev:open", "2.50", T0 + 50), at=112.0)
    price, reopen = deltas(step)
    assert (price.seq, price.status) == (3, protocol.UNSET), "the feed's message first"
    assert (reopen.seq, reopen.status, reopen.reason, reopen.ts) == (4, "open", None, T0 + 50)
    book = pipe.book("ev:open")
    assert (book.status, book.reason, book.selections[0].price) == ("open", None, Decimal("2.50"))
    assert pipe.book("ev:goal").reason == "goal", "suspended for its own reason: untouched"
    again = pipe.send(odds("ev:open", "2.60", T0 + 60))
    assert [d.status for d in deltas(again)] == [protocol.UNSET], "no second reopening"


def test_a_market_the_returning_message_suspends_stays_suspended() -> None:
    pipe = setup()
    pipe.tick(111.0)
    step = pipe.send(status("ev:open", "suspended", "var", T0 + 50), at=112.0)
    (change,) = deltas(step)
    assert (change.status, change.reason) == (protocol.UNSET, "var")
    assert pipe.book("ev:open").status == "suspended"


def test_any_message_about_the_event_counts_even_a_refused_one() -> None:
    pipe = setup()
    pipe.tick(111.0)
    step = pipe.send(odds("ev:nope", "2.50", T0 + 50), at=112.0)
    assert len(step.dead_letters) == 1
    (reopen,) = deltas(step)
    assert (reopen.market_id, reopen.status) == ("ev:open", "open")


def test_a_reopening_never_goes_back_in_time() -> None:
    pipe = setup()
    pipe.tick(111.0)
    step = pipe.send(odds("ev:goal", "2.50", T0 - 5_000), at=112.0)
    (reopen,) = [d for d in deltas(step) if d.status == "open"]
    assert reopen.ts == WALL, "not before the suspension it takes back"


def test_events_are_watched_separately() -> None:
    pipe = setup()
    pipe.send(event("ev2"), market("ev2:open", "ev2"), at=105.0)
    step = pipe.tick(111.0)
    assert [d.market_id for d in deltas(step)] == ["ev:open"]
    step = pipe.tick(115.5)
    assert [d.market_id for d in deltas(step)] == ["ev2:open"]


def test_an_ended_event_is_not_suspended() -> None:
    pipe = Pipe()
    pipe.send(event(phase="ended"), market("ev:open"), at=0.0)
    assert not pipe.tick(100.0).publications


def test_only_owned_events_are_ticked() -> None:
    pipe = setup()
    assert not pipe.tick(111.0, owned=lambda e: e != "ev").publications
    assert deltas(pipe.tick(111.0, owned=lambda e: e == "ev"))


def test_a_new_processor_reopens_what_a_previous_one_suspended() -> None:
    before = setup()
    before.tick(111.0)
    snapshots = [b.snapshot for b in before.processor.books.markets.values()]
    events = list(before.processor.books.events.values())
    after = Pipe()
    after.processor.restore(snapshots, events, now=500.0)
    assert not after.tick(505.0).publications, "restored events are heard from the restore"
    step = after.send(odds("ev:open", "2.40", T0 + 70), at=506.0)
    assert [(d.market_id, d.status) for d in deltas(step)] == [
        ("ev:open", protocol.UNSET),
        ("ev:open", "open"),
    ]


def test_watch_restarts_the_silence_and_forget_stops_watching() -> None:
    pipe = setup()
    pipe.processor.watch(["ev"], 109.0)
    assert not pipe.tick(115.0).publications
    pipe.processor.forget(["ev"])
    assert not pipe.tick(500.0).publications


def test_without_a_clock_the_processor_does_not_guard() -> None:
    processor = Processor(lambda m: "ep", stale_after_s=1.0)
    processor.process([FeedRecord("markets", 0, 0, encode_feed(market("ev:open")))])
    assert not processor.tick(1e9, WALL).publications
    assert not Processor(lambda m: "ep").tick(1e9, WALL).publications


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stale_after_s"):
        StalenessGuard(0)
