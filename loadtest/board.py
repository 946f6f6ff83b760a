"""The scoreboard: one small shared-memory file that every benchmark process maps.

The orchestrator (``loadtest.bench``) writes the control words (phase, publisher mode,
window, rate); each client process owns one slot and counts what it receives there, with
two latency histograms (fast and slow clients); publishers read the clients' counts to
keep a bounded number of deliveries in flight, and write how many messages they published.

Every word is an aligned 64-bit integer with a single writer, so readers on x86-64 never see
a torn value and no lock is needed. A reader sums slots at any moment; the values it sees
may lag by a few microseconds, which is all flow control and rate measurement need.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

# -- header words (written by the orchestrator unless noted) ----------------------------------
H_STOP = 0
"""Non-zero: every process stops (clients close, publishers return)."""
H_MODE = 1
"""Publisher mode: MODE_IDLE, MODE_WINDOW (saturate, bounded in-flight) or MODE_RATE."""
H_GEN = 2
"""Bumped on each mode change, so a publisher re-takes its baselines."""
H_WINDOW = 3
"""MODE_WINDOW: deliveries allowed in flight (published x subscribers - received)."""
H_RATE_MILLI = 4
"""MODE_RATE: publishes per 1000 seconds."""
H_SUBS = 5
"""Subscribers each publish reaches (the connected clients)."""
H_PUBLISHED = 6
"""Written by the publisher: messages published since it started."""
H_RECORD = 7
"""Non-zero: clients record latencies into their histograms."""
H_PACK = 8
"""Deltas per published frame (1, or more for the packed ceiling)."""
H_READING = 9
"""Non-zero while slow clients are allowed to read (toggled by the client processes)."""
H_PUBLISHER_ALIVE = 10
"""Written by the publisher: a heartbeat counter, so the orchestrator sees it is running."""
H_PUBLISH_US = 11
"""Written by the publisher: microseconds spent inside its publish calls (its own work,
an HTTP round trip for a peer published over HTTP), so far."""
H_WINDOW_FULL_US = 12
"""Written by the publisher: microseconds spent waiting because the window was full
(the server, not the publisher, was behind), so far."""
HEADER_WORDS = 16

MODE_IDLE = 0
MODE_WINDOW = 1
MODE_RATE = 2

# -- per client-process slot ------------------------------------------------------------------
S_CONNECTED = 0
S_FAILED = 1
S_CLOSED = 2
"""Connections the server closed (or reset)."""
S_FRAMES = 3
"""Messages (WebSocket messages or SSE events) received by fast clients."""
S_DELTAS = 4
"""Deltas received by fast clients (a packed frame counts each of its deltas)."""
S_BYTES = 5
S_SLOW_FRAMES = 6
S_SLOW_DELTAS = 7
S_SLOW_CLOSED = 8
"""Slow clients closed by the server (e.g. 4001 slow consumer)."""
S_DONE = 9
"""The process finished connecting (every connection attempted)."""
S_READY = 10
"""Connections that have received at least one delta: subscribed, as the client sees it."""
S_WORDS = 16

BUCKETS = 1024
"""Latency histogram buckets: 2 % wide, from 1 us to beyond 60 s."""
_LOG_STEP = math.log(1.02)


def bucket_of(micros: float) -> int:
    """Histogram bucket of a latency in microseconds (negative values count as 0)."""
    if micros < 1.0:
        return 0
    index = int(math.log(micros) / _LOG_STEP) + 1
    return index if index < BUCKETS else BUCKETS - 1


def bucket_micros(index: int) -> float:
    """Representative value (geometric middle) of a bucket, in microseconds."""
    if index == 0:
        return 0.5
    return math.exp((index - 0.5) * _LOG_STEP)


SLOT_WORDS = S_WORDS + 2 * BUCKETS


class Board:
    """A mapped scoreboard file with ``slots`` client-process slots."""

    def __init__(self, path: Path, slots: int, *, create: bool = False):
        self.path = path
        self.slots = slots
        size = 8 * (HEADER_WORDS + slots * SLOT_WORDS)
        if create:
            with path.open("wb") as f:
                f.truncate(size)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.words = memoryview(self._map).cast("q")

    @classmethod
    def open(cls, path: Path) -> Board:
        size = path.stat().st_size // 8
        return cls(path, (size - HEADER_WORDS) // SLOT_WORDS)

    def close(self) -> None:
        self.words.release()
        self._map.close()

    # -- header ---------------------------------------------------------------------------------
    def get(self, word: int) -> int:
        return int(self.words[word])

    def set(self, word: int, value: int) -> None:
        self.words[word] = value

    # -- slots ----------------------------------------------------------------------------------
    def base(self, slot: int) -> int:
        """Index of a slot's first word."""
        return HEADER_WORDS + slot * SLOT_WORDS

    def total(self, field: int, slots: Iterable[int] | None = None) -> int:
        words = self.words
        return sum(
            words[HEADER_WORDS + s * SLOT_WORDS + field]
            for s in (range(self.slots) if slots is None else slots)
        )

    def histogram(self, *, slow: bool = False) -> list[int]:
        """The merged latency histogram of every slot."""
        merged = [0] * BUCKETS
        offset = S_WORDS + (BUCKETS if slow else 0)
        for s in range(self.slots):
            start = self.base(s) + offset
            for i, n in enumerate(self.words[start : start + BUCKETS]):
                if n:
                    merged[i] += n
        return merged


def diff(after: Sequence[int], before: Sequence[int]) -> list[int]:
    """What a counter list gained between two readings (histograms are never reset:
    each slot has one writer, its client process)."""
    return [a - b for a, b in zip(after, before, strict=True)]


def percentiles(hist: Sequence[int], points: Sequence[float]) -> dict[float, float | None]:
    """Percentiles (in milliseconds) of a histogram; None when it is empty."""
    count = sum(hist)
    out: dict[float, float | None] = {}
    for p in points:
        if count == 0:
            out[p] = None
            continue
        rank = max(1, math.ceil(count * p / 100))
        seen = 0
        for i, n in enumerate(hist):
            seen += n
            if seen >= rank:
                out[p] = bucket_micros(i) / 1000
                break
    return out


def max_ms(hist: Sequence[int]) -> float | None:
    for i in range(len(hist) - 1, -1, -1):
        if hist[i]:
            return bucket_micros(i) / 1000
    return None
