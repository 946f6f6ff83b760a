"""The checker: what every client rebuilt, against the authoritative books.

Two authorities:

- **REST**: the snapshots live gateways serve once the pipeline has converged (every
  gateway must serve the same ones). Each client's books must equal them exactly (seq,
  epoch, content).
- **The pure processor**: a single :class:`feeds.processor.Processor` fed the same seeded
  synthetic feed in memory gives every market's book at *every* seq. The REST books must
  have the same content (epochs and feed timestamps differ between runs), and every
  state a client's book took on the way (what a screen showed) must be the pure book at
  that seq: a wrong intermediate price is a divergence even if the end is right.

The live pipeline may add steps of its own that no feed message caused: the staleness
guard suspends an event's open markets (reason ``feed_stale``) when its feed goes
silent (a Kafka outage, the end of the test feed) and reopens them when it speaks. Such
a step changes only that suspension, so it is recognised in the clients' histories;
each market's live seq maps to the pure seq minus the staleness steps before it, and a
book suspended for ``feed_stale`` compares as the open book it covers (:func:`unstale`).

A :class:`Verdict` counts, per scenario, what the clients met and what went wrong; the
pass criterion is :meth:`Verdict.failures` being empty.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import msgspec

import protocol
from feeds.embedded import epoch_minter
from feeds.model import FeedMessage, encode_feed
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay
from protocol import Delta, EventState, Snapshot
from tests.faults.client import ResilientClient, percentile

#: Flags about how a snapshot was delivered, not about the book (``conflated`` where the
#: protocol has it).
DELIVERY_FLAGS: dict[str, bool] = {
    f: False for f in ("reset", "conflated") if f in Snapshot.__struct_fields__
}


def content(snap: Snapshot) -> Snapshot:
    """The book without what differs between runs or deliveries: seq (callers compare it
    apart), epoch, feed timestamp, the delivery flags."""
    return msgspec.structs.replace(snap, seq=0, epoch="", ts=0, **DELIVERY_FLAGS)


STALE = "feed_stale"
"""The reason the staleness guard suspends markets with (and the only one it lifts)."""


def unstale(snap: Snapshot) -> Snapshot:
    """:func:`content`, with a ``feed_stale`` suspension lifted: the guard only suspends
    open markets and lifts only its own reason, so this is the book the feed made."""
    out = content(snap)
    if out.reason == STALE:
        out = msgspec.structs.replace(out, status="open", reason=None)
    return out


def is_stale_step(before: Snapshot, after: Snapshot) -> bool:
    """Whether ``after`` (the next seq of ``before``) only put on or lifted a
    ``feed_stale`` suspension: a step of the staleness guard, not of the feed."""
    return (before.reason == STALE) != (after.reason == STALE) and unstale(before) == unstale(after)


def exact(snap: Snapshot) -> Snapshot:
    """The book as a client must hold it (the delivery flags are not part of it)."""
    return msgspec.structs.replace(snap, **DELIVERY_FLAGS)


@dataclass
class Expectation:
    """Every book a single pure processor makes of a feed, at every seq."""

    states: dict[str, dict[int, Snapshot]]
    """market -> seq -> book content."""
    finals: dict[str, Snapshot]
    events: dict[str, EventState]

    @classmethod
    def of(cls, messages: Iterable[FeedMessage]) -> Expectation:
        processor = Processor(epoch_minter(lambda: 0))
        records = [FeedRecord("f", 0, i, encode_feed(m)) for i, m in enumerate(messages)]
        step = processor.process(records)
        states: dict[str, dict[int, Snapshot]] = {}
        books: dict[str, Snapshot] = {}
        for market_id, payload in step.deltas:
            message = protocol.decode_server(payload)
            if isinstance(message, Snapshot):
                books[market_id] = message
            elif isinstance(message, Delta):
                books[market_id] = protocol.apply(books[market_id], message)
            states.setdefault(market_id, {})[books[market_id].seq] = content(books[market_id])
        finals = {m: b.snapshot for m, b in processor.books.markets.items()}
        return cls(states, finals, dict(processor.books.events))

    @classmethod
    def synthetic(cls, seed: int, events: int, limit: int) -> Expectation:
        """What ``oddstream feed synth --seed --events --limit`` makes."""
        return cls.of(itertools.islice(MatchDay(seed=seed, events=events, start_ms=0), limit))

    def seqs(self) -> dict[str, int]:
        return {m: s.seq for m, s in self.finals.items()}


# -- REST ------------------------------------------------------------------------------------


async def rest_books(url: str) -> dict[str, Snapshot]:
    """Every market's snapshot as one gateway serves it."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        rows = (await http.get("/v1/markets")).json()
        books: dict[str, Snapshot] = {}
        for row in rows:
            response = await http.get(f"/v1/markets/{row['market_id']}")
            response.raise_for_status()
            snap = protocol.decode_server(response.content)
            assert isinstance(snap, Snapshot)
            books[snap.market_id] = snap
        return books


async def rest_events(url: str) -> dict[str, EventState]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        rows = (await http.get("/v1/events")).json()
    return {r["event_id"]: msgspec.convert(r, EventState) for r in rows}


async def converged(url: str, expectation: Expectation, timeout: float = 60) -> dict[str, Snapshot]:
    """REST books once every market the pure processor made is served with the content
    it made (lifting ``feed_stale``), at its final seq or later (the staleness guard
    adds steps), and no other market exists. Another process's progress has no event to
    await: polled. Fails on timeout with what was missing."""
    finals = expectation.finals
    current: dict[str, Snapshot] = {}

    def done() -> bool:
        return set(current) == set(finals) and all(
            current[m].seq >= f.seq and unstale(current[m]) == content(f) for m, f in finals.items()
        )

    try:
        async with asyncio.timeout(timeout):
            while True:
                current = await rest_books(url)
                if done():
                    return current
                await asyncio.sleep(0.25)
    except TimeoutError:
        wrong = {
            m: (current[m].seq if m in current else None, f.seq)
            for m, f in finals.items()
            if m not in current or unstale(current[m]) != content(f) or current[m].seq < f.seq
        }
        extra = sorted(set(current) - set(finals))
        raise AssertionError(
            f"{url}: books never converged: (seq served, pure seq) {wrong}, extra {extra}"
        ) from None


def stale_steps(clients: Iterable[ResilientClient]) -> dict[str, set[int]]:
    """Per market, the seqs any client saw the staleness guard take (as deltas)."""
    steps: dict[str, set[int]] = {}
    for client in clients:
        for m, states in client.history.items():
            for (_, a), (kind, b) in itertools.pairwise(states):
                if kind == "delta" and b.epoch == a.epoch and is_stale_step(a, b):
                    steps.setdefault(m, set()).add(b.seq)
    return steps


# -- verdict ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """One row of the fault table, and the evidence behind it."""

    scenario: str
    clients: int = 0
    deltas: int = 0
    resets: int = 0
    gaps: int = 0
    duplicates: int = 0
    epoch_breaks: int = 0
    unflagged: int = 0
    needless_resets: int = 0
    reset_distances: list[int] = field(default_factory=list)
    conflated: int = 0
    regressions: int = 0
    stale_steps: int = 0
    """Staleness steps (``feed_stale`` on or off) the clients saw, over all markets."""
    applied_across_gap: int = 0
    duplicates_applied: int = 0
    divergences: int = 0
    wrong_states: int = 0
    states_checked: int = 0
    reconnects: int = 0
    p99_lag_ms: int = 0
    """The worst client's p99 lag of live deltas."""
    worst_lag_ms: int = 0
    """The oldest delta any client applied, live or replayed after an outage."""
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    """Why the scenario's test failed otherwise (before its check, or an assertion of its
    own after it), as pytest reported it."""

    def failures(self) -> list[str]:
        """What breaks the pass criterion: divergent books or states, undetected gaps,
        duplicates applied; or the test failing otherwise. (Gaps the clients detected
        and healed are counted, not failed: the gateway should have healed them, see
        ``details``.)"""
        out = [self.error] if self.error else []
        if self.divergences:
            out.append(f"{self.divergences} divergent books")
        if self.wrong_states:
            out.append(f"{self.wrong_states} wrong intermediate states")
        if self.undetected_gaps:
            out.append(f"{self.undetected_gaps} undetected gaps")
        if self.regressions:
            out.append(f"{self.regressions} snapshots took a book back to an older seq")
        if self.duplicates_applied:
            out.append(f"{self.duplicates_applied} duplicates applied")
        return out

    @property
    def undetected_gaps(self) -> int:
        """Jumps a client trusted: unflagged snapshots after a resume, and deltas applied
        across a hole (which ``protocol.apply`` makes impossible; checked anyway)."""
        return self.unflagged + self.applied_across_gap


def check(
    scenario: str,
    clients: Sequence[ResilientClient],
    authority: Mapping[str, Snapshot],
    expectation: Expectation,
    *,
    authority_events: Mapping[str, EventState] | None = None,
) -> Verdict:
    """Compare every client's books (and every state they took) with the authorities."""
    v = Verdict(scenario, clients=len(clients))
    steps = stale_steps(clients)
    v.stale_steps = sum(map(len, steps.values()))
    # REST against the pure processor.
    for m, snap in authority.items():
        want = expectation.finals.get(m)
        if want is None or unstale(snap) != content(want) or snap.seq < want.seq:
            v.divergences += 1
            v.details.append(f"REST {m}@{snap.seq} differs from the pure processor")
    for m in set(expectation.finals) - set(authority):
        v.divergences += 1
        v.details.append(f"REST lacks {m}")
    lags: list[int] = []
    for client in clients:
        s = client.stats
        v.deltas += s.deltas
        v.resets += s.resets
        v.gaps += s.gaps
        v.duplicates += s.duplicates
        v.epoch_breaks += s.epoch_breaks
        v.unflagged += s.unflagged
        v.needless_resets += s.needless_resets
        v.reset_distances += s.reset_distances
        v.conflated += s.conflated
        v.regressions += s.regressions
        v.reconnects += s.reconnects
        lags.append(percentile(s.lags_ms, 0.99))
        v.worst_lag_ms = max(v.worst_lag_ms, s.worst_lag_ms, s.worst_catchup_ms)
        across, doubled = contiguity(client)
        v.applied_across_gap += len(across)
        v.duplicates_applied += len(doubled)
        v.details += (across + doubled)[:5]
        # Final books against REST, exactly.
        for m, snap in authority.items():
            if not client.covers(snap):
                continue
            held = client.books.get(m)
            if held is None or exact(held) != snap:
                v.divergences += 1
                got = "nothing" if held is None else f"{held.epoch}/{held.seq}"
                v.details.append(f"{client.name}: {m} is {got}, REST {snap.epoch}/{snap.seq}")
        for m in set(client.books) - set(authority):
            v.divergences += 1
            v.details.append(f"{client.name}: holds {m}, which REST does not know")
        if authority_events is not None:
            for e in client.events:
                if client.event_states.get(e) != authority_events.get(e):
                    v.divergences += 1
                    v.details.append(f"{client.name}: event {e} differs from REST")
        # Every state on the way against the pure processor's book at that seq (less
        # the staleness steps before it).
        for m, states in client.history.items():
            want_states = expectation.states.get(m, {})
            market_steps = sorted(steps.get(m, ()))
            for _, snap in states:
                v.states_checked += 1
                pure_seq = snap.seq - bisect.bisect_right(market_steps, snap.seq)
                want = want_states.get(pure_seq)
                if want is None or unstale(snap) != want:
                    v.wrong_states += 1
                    if v.wrong_states <= 5:
                        v.details.append(
                            f"{client.name}: {m}@{snap.seq} (pure seq {pure_seq}) was wrong"
                        )
        if s.gaps or s.duplicates or s.epoch_breaks or s.healing_skipped or s.orphans:
            v.details.append(
                f"{client.name}: gaps={s.gaps} duplicates={s.duplicates} "
                f"epoch_breaks={s.epoch_breaks} healing_skipped={s.healing_skipped} "
                f"orphans={s.orphans} heals={s.heals}"
            )
    v.p99_lag_ms = max(lags, default=0)
    return v


def contiguity(client: ResilientClient) -> tuple[list[str], list[str]]:
    """Independent of ``protocol.apply``: within a client's history, each delta step must
    be the next seq of the same epoch. Returns (steps across a gap or an epoch, steps
    that went back or repeated a seq)."""
    across: list[str] = []
    doubled: list[str] = []
    for m, states in client.history.items():
        for (_, a), (kind, b) in itertools.pairwise(states):
            if kind != "delta" or (b.epoch == a.epoch and b.seq == a.seq + 1):
                continue
            step = f"{client.name}: {m} {a.epoch}/{a.seq} -> {b.epoch}/{b.seq} by a delta"
            (doubled if b.epoch == a.epoch and b.seq <= a.seq else across).append(step)
    return across, doubled
