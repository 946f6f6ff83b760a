"""The messages every system under test fans out: real oddstream ``delta`` messages of
about 200 bytes, over a small set of hot markets (a sport lobby's main markets).

Each publish encodes one delta, once, stamped with the wall clock in milliseconds as the
feed would (``ts``), with the next ``seq`` of its market, so the oddstream gateway's relay
accepts it exactly as it would one from a book processor. The peers and the ceiling get the
very same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal

import protocol
from channels.store import Batch, MemoryStore
from protocol import Delta, EventState, Selection, SelectionChange, Snapshot

EPOCH = "b1"
SPORT = "football"
_PRICES = ("1.91", "2.05", "2.10", "2.25", "3.40", "3.55", "3.60", "3.75", "4.20", "4.50")
_OUTCOMES = ("home", "draw", "away")


def market_ids(count: int) -> list[str]:
    return [f"e{i // 5:04d}:m{i % 5}" for i in range(count)]


def event_of(market_id: str) -> str:
    return market_id.split(":", 1)[0]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def snapshots(markets: Sequence[str], ts: int) -> list[Snapshot]:
    """The books the deltas start from (``seq`` 1), for seeding a store."""
    return [
        Snapshot(
            market_id=m,
            event_id=event_of(m),
            seq=1,
            epoch=EPOCH,
            ts=ts,
            sport=SPORT,
            kind="1x2",
            name="Match Result",
            status="open",
            selections=tuple(
                Selection(selection_id=o, name=o.title(), price=Decimal(_PRICES[k]))
                for k, o in enumerate(_OUTCOMES)
            ),
            main=True,
        )
        for m in markets
    ]


def events(markets: Sequence[str], ts: int) -> list[EventState]:
    return [
        EventState(
            event_id=e,
            seq=1,
            ts=ts,
            sport=SPORT,
            competition="Bench League",
            name=f"{e} home v {e} away",
            home=f"{e} home",
            away=f"{e} away",
            start_time=ts,
            phase="live",
        )
        for e in dict.fromkeys(event_of(m) for m in markets)
    ]


class DeltaSource:
    """Round-robin deltas over ``markets``: each call to :meth:`next` is the next change of
    the next market (two of its three prices move), encoded once: about 200 bytes."""

    def __init__(self, markets: Sequence[str]):
        self.markets = list(markets)
        self._seq = [1] * len(self.markets)
        self._turn = 0
        self.published = 0
        self.market = self.markets[0]
        """The market of the delta :meth:`next` returned last."""

    def next(self, ts: int | None = None) -> bytes:
        i = self._turn
        self._turn = (i + 1) % len(self.markets)
        self._seq[i] += 1
        seq = self._seq[i]
        market = self.market = self.markets[i]
        delta = Delta(
            market_id=market,
            event_id=event_of(market),
            seq=seq,
            epoch=EPOCH,
            ts=now_ms() if ts is None else ts,
            selections=tuple(
                SelectionChange(
                    selection_id=o, price=Decimal(_PRICES[(seq + 3 * k) % len(_PRICES)])
                )
                for k, o in enumerate(_OUTCOMES)
                if k != seq % 3
            ),
        )
        self.published += 1
        return protocol.encode(delta)

    def packed(self, count: int) -> bytes:
        """``count`` deltas in one JSON array (what per-client coalescing would send)."""
        ts = now_ms()
        return b"[" + b",".join(self.next(ts) for _ in range(count)) + b"]"


def seeded_store(markets: Sequence[str], history_size: int) -> MemoryStore:
    """A gateway's memory store holding the markets' first snapshots and their events
    (the books the benchmark's deltas continue)."""
    ts = now_ms()
    store = MemoryStore(history_size=history_size)
    store.write_now(
        Batch(
            snapshots={s.market_id: s for s in snapshots(markets, ts)},
            events={e.event_id: e for e in events(markets, ts)},
        )
    )
    return store


def subscribe_command(markets: Sequence[str]) -> bytes:
    return protocol.encode(protocol.Subscribe(markets=tuple(markets)))
