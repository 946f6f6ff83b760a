"""The checker and the client's book rules, without services: a checker that cannot see a
wrong book would make every scenario pass. Clients here are fed by hand (``take``)
with what a pure processor made of a short synthetic feed, then tampered with."""

from __future__ import annotations

import itertools

import msgspec
import pytest

import protocol
from feeds.embedded import epoch_minter
from feeds.model import encode_feed
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay
from protocol import Delta, Position, Snapshot
from tests.faults.checker import STALE, Expectation, check, unstale
from tests.faults.client import ResilientClient

LIMIT = 400


def stream() -> tuple[Expectation, list[protocol.ServerMessage]]:
    """The pure books of a short feed, and the messages a subscriber of everything from
    the start receives (snapshots at seq 1, then deltas)."""
    messages = list(itertools.islice(MatchDay(seed=3, events=2, start_ms=0), LIMIT))
    processor = Processor(epoch_minter(lambda: 0))
    step = processor.process(
        [FeedRecord("f", 0, i, encode_feed(m)) for i, m in enumerate(messages)]
    )
    return Expectation.of(messages), [protocol.decode_server(p) for _, p in step.deltas]


def client(events: tuple[str, ...]) -> ResilientClient:
    return ResilientClient("t", ["http://127.0.0.1:1"], events=events)


def authority(c: ResilientClient) -> dict[str, Snapshot]:
    return {m: msgspec.structs.replace(b, reset=False) for m, b in c.books.items()}


def fed(
    tamper: int | None = None,
) -> tuple[Expectation, ResilientClient, list[protocol.ServerMessage]]:
    expectation, messages = stream()
    events = tuple(sorted({m.event_id for m in messages if isinstance(m, Snapshot | Delta)}))
    c = client(events)
    for i, message in enumerate(messages):
        if i == tamper and isinstance(message, Delta) and message.selections:
            first = message.selections[0]
            wrong = msgspec.structs.replace(first, price=protocol.UNSET)
            message = msgspec.structs.replace(message, selections=(wrong, *message.selections[1:]))
        c.take(message)
    return expectation, c, messages


def test_a_faithful_client_passes() -> None:
    expectation, c, _ = fed()
    verdict = check("t", [c], expectation.finals, expectation)
    assert verdict.failures() == []
    assert verdict.states_checked > LIMIT / 2
    assert c.stats.gaps == c.stats.duplicates == 0


def test_a_wrong_price_on_the_way_is_a_divergence() -> None:
    expectation, c, messages = fed()
    tamper = next(
        i
        for i, m in enumerate(messages)
        if i > len(messages) // 2 and isinstance(m, Delta) and m.selections
    )
    expectation, c, _ = fed(tamper)
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.wrong_states >= 1, verdict.details


def test_final_books_must_equal_rest() -> None:
    expectation, c, _ = fed()
    rest = dict(expectation.finals)
    market = next(iter(rest))
    rest[market] = msgspec.structs.replace(rest[market], seq=rest[market].seq + 1)
    verdict = check("t", [c], rest, expectation)
    assert verdict.divergences >= 1


@pytest.mark.parametrize("kind", ["gap", "stale", "epoch"])
def test_deltas_that_do_not_follow_are_counted_never_applied(kind: str) -> None:
    expectation, c, _ = fed()
    market, book = next(iter(c.books.items()))
    seq = {"gap": book.seq + 2, "stale": book.seq, "epoch": book.seq + 1}[kind]
    epoch = "other" if kind == "epoch" else book.epoch
    bad = Delta(market_id=market, event_id=book.event_id, seq=seq, epoch=epoch, ts=0)
    assert c.take(bad) == [market]  # Healed by a resume of that market.
    assert c.books[market] == book
    counts = (c.stats.gaps, c.stats.duplicates, c.stats.epoch_breaks)
    assert counts == {"gap": (1, 0, 0), "stale": (0, 1, 0), "epoch": (0, 0, 1)}[kind]
    # While healing, later deltas are skipped; the next seq of the book heals it.
    c.take(msgspec.structs.replace(bad, epoch=book.epoch, seq=book.seq + 3))
    assert c.stats.healing_skipped == 1
    assert c.books[market] == book
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.failures() == []


def test_an_unflagged_jump_after_a_resume_is_an_undetected_gap() -> None:
    expectation, c, _ = fed()
    market, book = next(iter(c.books.items()))
    c._resuming[market] = Position(market_id=market, epoch=book.epoch, seq=book.seq)
    c.take(msgspec.structs.replace(book, seq=book.seq + 5))
    assert c.stats.unflagged == 1
    assert "undetected" in " ".join(check("t", [c], authority(c), expectation).failures())


def test_a_reset_snapshot_is_always_taken() -> None:
    _, c, _ = fed()
    market, book = next(iter(c.books.items()))
    c._resuming[market] = Position(market_id=market, epoch=book.epoch, seq=book.seq - 1)
    c.take(protocol.as_reset(msgspec.structs.replace(book, epoch="new")))
    assert (c.stats.resets, c.stats.unflagged) == (1, 0)
    assert c.books[market].epoch == "new"


def test_staleness_steps_map_onto_the_feed() -> None:
    """A feed_stale suspension and its reopening are two seqs no feed message caused:
    states after them compare with the pure book two seqs earlier."""
    expectation, c, _ = fed()
    market, book = next((m, b) for m, b in c.books.items() if b.status == "open")
    suspended = Delta(
        market_id=market,
        event_id=book.event_id,
        seq=book.seq + 1,
        epoch=book.epoch,
        ts=book.ts + 1,
        status="suspended",
        reason=STALE,
    )
    reopened = Delta(
        market_id=market,
        event_id=book.event_id,
        seq=book.seq + 2,
        epoch=book.epoch,
        ts=book.ts + 2,
        status="open",
        reason=None,
    )
    c.take(suspended)
    assert unstale(c.books[market]) == unstale(book)
    c.take(reopened)
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.failures() == [], verdict.details
    assert verdict.stale_steps == 2
