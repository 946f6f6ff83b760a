"""The checker and the client's book rules, without services: a checker that cannot see a
wrong book would make every scenario pass. Clients here are fed by hand (``take``)
with what the production processor made of a short synthetic feed, then tampered with;
the checker's expectations come from its own reference model."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import msgspec
import pytest

import protocol
from feeds.embedded import epoch_minter
from feeds.model import encode_feed
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay
from protocol import Delta, Position, Snapshot
from tests.faults import checker
from tests.faults.checker import STALE, Expectation, check, content, unstale
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
    tamper: int | None = None, *, crc: bool = False
) -> tuple[Expectation, ResilientClient, list[protocol.ServerMessage]]:
    """A client fed the whole stream; message ``tamper`` loses its first selection's
    price change, and its ``crc`` unless ``crc``."""
    expectation, messages = stream()
    events = tuple(sorted({m.event_id for m in messages if isinstance(m, Snapshot | Delta)}))
    c = client(events)
    for i, message in enumerate(messages):
        if i == tamper and isinstance(message, Delta) and message.selections:
            first = message.selections[0]
            wrong = msgspec.structs.replace(first, price=protocol.UNSET)
            message = msgspec.structs.replace(
                message,
                selections=(wrong, *message.selections[1:]),
                crc=message.crc if crc else None,
            )
        c.take(message)
    return expectation, c, messages


def test_the_checker_shares_no_code_with_the_books_it_checks() -> None:
    tree = ast.parse(Path(checker.__file__).read_text(encoding="utf-8"))
    used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    used |= {
        f"protocol.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "protocol"
    }
    production = {"feeds.book", "feeds.processor", "protocol.book", "protocol.checksum"}
    assert not used & (production | {"protocol.apply", "protocol.checksum", "protocol.verify"})


@pytest.mark.parametrize("seed", [3, 8])
def test_the_reference_model_agrees_with_the_processor_at_every_seq(seed: int) -> None:
    """Two implementations of the book rules that share no code: where they disagree, one
    of them is wrong, and the fault suite would blame (or excuse) the pipeline."""
    messages = list(itertools.islice(MatchDay(seed=seed, events=4, start_ms=0), 6000))
    expectation = Expectation.of(messages)
    processor = Processor(epoch_minter(lambda: 0))
    step = processor.process(
        [FeedRecord("f", 0, i, encode_feed(m)) for i, m in enumerate(messages)]
    )
    assert not step.dead_letters
    books: dict[str, Snapshot] = {}
    for market, payload in step.deltas:
        message = protocol.decode_server(payload)
        assert isinstance(message, Snapshot | Delta)
        book = message if isinstance(message, Snapshot) else protocol.apply(books[market], message)
        books[market] = book
        assert expectation.states[market][book.seq] == content(book), (market, book.seq)
    assert expectation.seqs() == {m: b.snapshot.seq for m, b in processor.books.markets.items()}
    assert sum(map(len, expectation.states.values())) == len(step.deltas)


def test_a_faithful_client_passes() -> None:
    expectation, c, _ = fed()
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.failures() == []
    assert verdict.states_checked > LIMIT / 2
    assert c.stats.gaps == c.stats.duplicates == 0


def tampered() -> int:
    _, messages = stream()
    return next(
        i
        for i, m in enumerate(messages)
        if i > len(messages) // 2 and isinstance(m, Delta) and m.selections
    )


def test_a_wrong_price_on_the_way_is_a_divergence() -> None:
    expectation, c, _ = fed(tampered())
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.wrong_states >= 1, verdict.details


def test_a_delta_failing_its_checksum_is_refused_and_fails_the_scenario() -> None:
    expectation, c, _ = fed(tampered(), crc=True)
    assert c.stats.checksum_failures == 1
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.wrong_states == 0, "never applied"
    assert "1 deltas failing their checksum forwarded to clients" in verdict.failures()


def test_final_books_must_equal_rest() -> None:
    expectation, c, _ = fed()
    rest = authority(c)
    market = next(iter(rest))
    rest[market] = msgspec.structs.replace(rest[market], seq=rest[market].seq + 1)
    verdict = check("t", [c], rest, expectation)
    assert verdict.divergences >= 1


@pytest.mark.parametrize(
    ("kind", "failure"),
    [
        ("gap", "1 gaps forwarded to clients"),
        ("stale", "1 duplicate deltas forwarded to clients"),
        ("epoch", "1 deltas of a foreign epoch forwarded to clients"),
    ],
)
def test_a_gateway_forwarding_what_it_should_heal_fails(kind: str, failure: str) -> None:
    """The client heals a gap, a duplicate or a foreign epoch by itself and never applies
    it; but the gateway should not have passed it on: the scenario fails."""
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
    assert verdict.failures() == [failure]
    assert (verdict.divergences, verdict.wrong_states, verdict.undetected_gaps) == (0, 0, 0)


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
        crc=protocol.checksum(msgspec.structs.replace(book, status="suspended")),
    )
    reopened = Delta(
        market_id=market,
        event_id=book.event_id,
        seq=book.seq + 2,
        epoch=book.epoch,
        ts=book.ts + 2,
        status="open",
        reason=None,
        crc=book.crc,
    )
    c.take(suspended)
    assert unstale(c.books[market]) == unstale(book)
    c.take(reopened)
    verdict = check("t", [c], authority(c), expectation)
    assert verdict.failures() == [], verdict.details
    assert verdict.stale_steps == 2
