"""The checker: what every client rebuilt, against the authoritative books.

Two authorities:

- **REST**: the snapshots live gateways serve once the pipeline has converged (every
  gateway must serve the same ones). Each client's books must equal them exactly (seq,
  epoch, content).
- **The reference model**: :class:`ReferenceBooks`, a deliberately small model of the
  book rules of its own (it shares no code with :class:`feeds.book.MarketBook`,
  :class:`feeds.processor.Processor` or ``protocol.apply``, so a bug there cannot hide
  itself), fed the same seeded synthetic feed in memory, gives every market's book at
  *every* seq, checksum included. The REST books must have the same content (epochs and
  feed timestamps differ between runs), and every state a client's book took on the way
  (what a screen showed) must be the reference book at that seq: a wrong intermediate
  price is a divergence even if the end is right.

The live pipeline may add steps of its own that no feed message caused: the staleness
guard suspends an event's open markets (reason ``feed_stale``) when its feed goes
silent (a Kafka outage, the end of the test feed) and reopens them when it speaks. Such
a step changes only that suspension, so it is recognised in the clients' histories;
each market's live seq maps to the reference seq minus the staleness steps before it, and a
book suspended for ``feed_stale`` compares as the open book it covers (:func:`unstale`).

A :class:`Verdict` counts, per scenario, what the clients met and what went wrong; the
pass criterion is :meth:`Verdict.failures` being empty. A gateway heals gaps, duplicates
and foreign epochs before passing anything on (guarantee 4), so a client that meets one
fails the scenario too, even though it healed it itself.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

import protocol
from feeds import model as feed
from feeds.synthetic import MatchDay
from protocol import UNSET, EventState, Selection, Snapshot
from tests.faults.client import ResilientClient, percentile
from tests.faults.topic import TopicVerdict

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
        crc = None if out.crc is None else reference_crc("open", out.selections)
        out = msgspec.structs.replace(out, status="open", reason=None, crc=crc)
    return out


def is_stale_step(before: Snapshot, after: Snapshot) -> bool:
    """Whether ``after`` (the next seq of ``before``) only put on or lifted a
    ``feed_stale`` suspension: a step of the staleness guard, not of the feed."""
    return (before.reason == STALE) != (after.reason == STALE) and unstale(before) == unstale(after)


def exact(snap: Snapshot) -> Snapshot:
    """The book as a client must hold it (the delivery flags are not part of it)."""
    return msgspec.structs.replace(snap, **DELIVERY_FLAGS)


_FINAL = ("settled", "voided")
#: Selection fields a feed price may update when present.
_PRICE_DATA = ("back", "lay", "ltp", "volume", "bsp", "adjustment", "removed_at")
#: Selection fields a market definition gives in full (the settlement factors it clears).
_DEFINED = ("name", "price", "status", *_PRICE_DATA, "dead_heat", "void_factor")


class ReferenceBooks:
    """The book rules of ``docs/protocol.md`` and ``docs/feeds.md``, kept small on purpose.

    A book is a plain dict; a feed message is applied by rewriting it, and it takes a
    ``seq`` only when the book changed. A message the rules refuse (anything about a
    settled or voided market but a rollback, prices or a reopening of a closed market,
    a market made final by a status, prices for an unknown selection) changes nothing.
    Values equal as decimals keep the form the book holds (``2.1`` stays ``2.1`` when
    ``2.10`` comes). Only what a valid feed says is modelled: invalid prices and the
    like are the book's tests' business, not the fault suite's.
    """

    def __init__(self) -> None:
        self.books: dict[str, dict[str, Any]] = {}
        self.seqs: dict[str, int] = {}
        self.states: dict[str, dict[int, Snapshot]] = {}

    def take(self, message: feed.FeedMessage) -> None:
        if isinstance(message, feed.FeedEvent):
            return
        old = self.books.get(message.market_id)
        if old is None:
            if isinstance(message, feed.FeedMarket) and message.status not in _FINAL:
                self._step(message.market_id, self._created(message))
            return
        new = self._applied(old, message)
        if new is not None and new != old:
            self._step(message.market_id, new)

    def snapshot(self, market_id: str) -> Snapshot:
        """The book as a snapshot (seq as counted here; epoch and ts left empty)."""
        b = self.books[market_id]
        selections = tuple(
            Selection(selection_id=sid, **fields) for sid, fields in b["selections"].items()
        )
        return Snapshot(
            market_id=market_id,
            event_id=b["event_id"],
            seq=self.seqs[market_id],
            epoch="",
            ts=0,
            sport=b["sport"],
            kind=b["kind"],
            name=b["name"],
            status=b["status"],
            selections=selections,
            main=b["main"],
            reason=b["reason"],
            volume=b["volume"],
            crc=reference_crc(b["status"], selections),
        )

    def _step(self, market_id: str, book: dict[str, Any]) -> None:
        self.books[market_id] = book
        seq = self.seqs[market_id] = self.seqs.get(market_id, 0) + 1
        self.states.setdefault(market_id, {})[seq] = self.snapshot(market_id)

    @staticmethod
    def _created(m: feed.FeedMarket) -> dict[str, Any]:
        return {
            "event_id": m.event_id,
            "sport": m.sport,
            "kind": m.market_kind,
            "name": m.name,
            "status": m.status,
            "reason": None if m.status == "open" else m.reason,
            "main": m.main,
            "volume": m.volume,
            "selections": {
                s.selection_id: {f: getattr(s, f, None) for f in _DEFINED} for s in m.selections
            },
        }

    def _applied(self, old: dict[str, Any], m: feed.FeedMessage) -> dict[str, Any] | None:
        """The book after ``m``, or None when the rules refuse it."""
        rollback = isinstance(m, feed.FeedResult) and m.rollback
        if old["status"] in _FINAL and not rollback:
            return None
        b = {**old, "selections": {sid: dict(f) for sid, f in old["selections"].items()}}
        sels = b["selections"]
        match m:
            case feed.FeedMarket() | feed.FeedMarketStatus() if m.status in _FINAL:
                return None
            case feed.FeedMarket():
                _put(b, name=m.name, main=m.main, volume=m.volume, status=m.status)
                b["reason"] = m.reason
                for s in m.selections:
                    fields = {f: getattr(s, f, None) for f in _DEFINED}
                    _put(sels.setdefault(s.selection_id, {}), **fields)
            case feed.FeedMarketStatus():
                _put(b, status=m.status)
                b["reason"] = m.reason
            case feed.FeedOdds():
                if old["status"] == "closed" or any(p.selection_id not in sels for p in m.prices):
                    return None
                for p in m.prices:
                    data = {f: getattr(p, f) for f in _PRICE_DATA if getattr(p, f) is not UNSET}
                    if p.status is not None:
                        data["status"] = p.status
                    _put(sels[p.selection_id], price=p.price, **data)
                if m.volume is not UNSET:
                    _put(b, volume=m.volume)
            case feed.FeedResult() if rollback:
                if old["status"] not in _FINAL:
                    return None
                _put(b, status="suspended")
                b["reason"] = m.reason or "rollback"
                for f in sels.values():
                    back = "active" if f["status"] in ("winner", "loser", "void") else f["status"]
                    _put(f, status=back, dead_heat=None, void_factor=None)
            case feed.FeedResult():
                b["status"], b["reason"] = ("voided" if m.void else "settled"), m.reason
                named = dict(m.results)
                for sid, f in sels.items():
                    if m.void:
                        result = "void" if f["status"] != "removed" else "removed"
                    else:
                        result = named.get(sid, "loser" if f["status"] == "active" else f["status"])
                    _put(f, status=result)
                for sid, factor in m.dead_heat:
                    _put(sels[sid], dead_heat=factor)
                for sid, factor in m.void_factors:
                    _put(sels[sid], void_factor=factor)
        if b["status"] == "open":
            b["reason"] = None
        frozen = old["status"] == "closed" and b["status"] not in _FINAL
        if frozen and (b["status"] != "closed" or b["selections"] != old["selections"]):
            return None  # A closed market's prices are frozen: only a result may follow.
        return b


def _put(target: dict[str, Any], **values: Any) -> None:
    """Set each value unless the target holds an equal one (decimals keep their form)."""
    for key, value in values.items():
        if key not in target or target[key] != value:
            target[key] = value


def reference_crc(status: str, selections: Sequence[Selection]) -> int:
    """The book checksum, written from its definition in ``docs/protocol.md``."""
    lines = [status]
    for s in selections:
        ladders = [",".join(f"{p}@{q}" for p, q in side) for side in (s.back, s.lay)]
        price = "" if s.price is None else str(s.price)
        lines.append("|".join([s.selection_id, s.status, price, *ladders]))
    return zlib.crc32("\n".join(lines).encode())


@dataclass
class Expectation:
    """Every book the reference model makes of a feed, at every seq."""

    states: dict[str, dict[int, Snapshot]]
    """market -> seq -> book content."""
    finals: dict[str, Snapshot]

    @classmethod
    def of(cls, messages: Iterable[feed.FeedMessage]) -> Expectation:
        model = ReferenceBooks()
        for message in messages:
            model.take(message)
        states = {m: {q: content(b) for q, b in s.items()} for m, s in model.states.items()}
        return cls(states, {m: model.snapshot(m) for m in model.books})

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
    """REST books once every market the reference model made is served with the content
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
            f"{url}: books never converged: (seq served, reference seq) {wrong}, extra {extra}"
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
    checksum_failures: int = 0
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
    topic: TopicVerdict | None = None
    """The check of the ``deltas`` topic, in the scenarios that read it."""
    error: str = ""
    """Why the scenario's test failed otherwise (before its check, or an assertion of its
    own after it), as pytest reported it."""

    def failures(self) -> list[str]:
        """What breaks the pass criterion: divergent books or states, undetected gaps,
        duplicates applied; a gap, a duplicate, a foreign epoch or a book failing its
        checksum that a gateway passed on to a client instead of healing it (the client
        healed it, but guarantee 4 makes that the gateway's job); or the test failing
        otherwise."""
        out = [self.error] if self.error else []
        for count, what in (
            (self.gaps, "gaps"),
            (self.duplicates, "duplicate deltas"),
            (self.epoch_breaks, "deltas of a foreign epoch"),
            (self.checksum_failures, "deltas failing their checksum"),
        ):
            if count:
                out.append(f"{count} {what} forwarded to clients")
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
        if self.topic is not None:
            out += self.topic.failures()
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
    # REST against the reference model.
    for m, snap in authority.items():
        want = expectation.finals.get(m)
        if want is None or unstale(snap) != content(want) or snap.seq < want.seq:
            v.divergences += 1
            v.details.append(f"REST {m}@{snap.seq} differs from the reference model")
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
        v.checksum_failures += s.checksum_failures
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
        # Every state on the way against the reference book at that seq (less
        # the staleness steps before it).
        for m, states in client.history.items():
            want_states = expectation.states.get(m, {})
            market_steps = sorted(steps.get(m, ()))
            for _, snap in states:
                v.states_checked += 1
                ref_seq = snap.seq - bisect.bisect_right(market_steps, snap.seq)
                want = want_states.get(ref_seq)
                if want is None or unstale(snap) != want:
                    v.wrong_states += 1
                    if v.wrong_states <= 5:
                        v.details.append(
                            f"{client.name}: {m}@{snap.seq} (reference seq {ref_seq}) was wrong"
                        )
        forwarded = s.gaps + s.duplicates + s.epoch_breaks + s.checksum_failures
        if forwarded or s.healing_skipped or s.orphans:
            v.details.append(
                f"{client.name}: gaps={s.gaps} duplicates={s.duplicates} "
                f"epoch_breaks={s.epoch_breaks} checksum_failures={s.checksum_failures} "
                f"healing_skipped={s.healing_skipped} "
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
