"""The feed side of every system under test: publishes deltas as the scoreboard says.

Modes (set by the orchestrator on the board):

* ``MODE_WINDOW``: saturation. Publish as fast as the clients take it, keeping at most
  ``H_WINDOW`` deliveries in flight (published x subscribers x deltas per frame, minus what
  the clients counted). Every system gets the same window, so the same amount of queued
  work; the delivered rate it reaches is its throughput.
* ``MODE_RATE``: a fixed rate of publishes per second, evenly spaced, for latency.

The same loop drives the oddstream gateway (in process, through its broker seam), the
ceiling server and the broadcaster peer (in process), and Pushpin (over its HTTP publish
API, from a helper process). Every wait is bounded; the loop ends when the board says stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loadtest.board import (
    H_GEN,
    H_MODE,
    H_PACK,
    H_PUBLISH_US,
    H_PUBLISHED,
    H_PUBLISHER_ALIVE,
    H_RATE_MILLI,
    H_STOP,
    H_SUBS,
    H_WINDOW,
    H_WINDOW_FULL_US,
    MODE_RATE,
    MODE_WINDOW,
    S_CLOSED,
    S_DELTAS,
    S_SLOW_CLOSED,
    S_SLOW_DELTAS,
    Board,
)

Publish = Callable[[int], Awaitable[None]]
"""Publish this many messages (1, or more to batch when the window allows)."""

_IDLE_S = 0.01
_FULL_S = 0.0005
_MAX_BATCH = 64


async def drive(board: Board, publish: Publish, *, max_batch: int = _MAX_BATCH) -> None:
    """Run until the board's stop word is set."""
    published = 0
    alive = 0
    while not board.get(H_STOP):
        alive += 1
        board.set(H_PUBLISHER_ALIVE, alive)
        mode = board.get(H_MODE)
        gen = board.get(H_GEN)
        if mode == MODE_WINDOW:
            published = await _window(board, publish, gen, published, max_batch)
        elif mode == MODE_RATE:
            published = await _rate(board, publish, gen, published)
        else:
            await asyncio.sleep(_IDLE_S)


def _account(board: Board, word: int, since_ns: int) -> None:
    board.set(word, board.get(word) + (time.perf_counter_ns() - since_ns) // 1000)


def _received(board: Board) -> int:
    return board.total(S_DELTAS) + board.total(S_SLOW_DELTAS)


def _closed(board: Board) -> int:
    return board.total(S_CLOSED) + board.total(S_SLOW_CLOSED)


class Flight:
    """Deliveries in flight in ``MODE_WINDOW``: what was published since the window opened,
    times the live subscribers and the deltas per frame, minus what the clients counted.

    A client the server closes receives nothing more, so its share would stay "in flight"
    for ever and starve the others: when the live count falls, the window is re-based and
    only the live clients' part of what was in flight is kept (the dropped client's part
    is returned)."""

    def __init__(self, published: int, received: int, live: int):
        self.published = published
        self.received = received
        self.live = live
        self.carry = 0

    def count(self, published: int, received: int, live: int, pack: int) -> int:
        if live != self.live:
            before = self.count(published, received, self.live, pack)
            self.carry = before * max(0, live) // max(1, self.live)
            self.published, self.received, self.live = published, received, live
        return (
            self.carry
            + (published - self.published) * max(0, self.live) * max(1, pack)
            - (received - self.received)
        )


async def _window(board: Board, publish: Publish, gen: int, published: int, max_batch: int) -> int:
    # H_SUBS is the clients connected when the phase began; the board counts every client
    # the server closed since they connected (a fresh board per measured system).
    flight = Flight(published, _received(board), board.get(H_SUBS) - _closed(board))
    while board.get(H_GEN) == gen and not board.get(H_STOP):
        subs = board.get(H_SUBS)
        live = subs - _closed(board)
        if live <= 0:
            await asyncio.sleep(_IDLE_S)
            continue
        pack = max(1, board.get(H_PACK))
        in_flight = flight.count(published, _received(board), live, pack)
        window = board.get(H_WINDOW) * live // max(1, subs)  # The live clients' part.
        room = (window - in_flight) // (live * pack)
        if room <= 0:
            t0 = time.perf_counter_ns()
            await asyncio.sleep(_FULL_S)
            _account(board, H_WINDOW_FULL_US, t0)
            continue
        n = min(room, max_batch)
        t0 = time.perf_counter_ns()
        await publish(n)
        _account(board, H_PUBLISH_US, t0)
        published += n
        board.set(H_PUBLISHED, published)
        await asyncio.sleep(0)  # Let the writers run between batches.
    return published


async def _rate(board: Board, publish: Publish, gen: int, published: int) -> int:
    started = time.monotonic()
    sent = 0
    while board.get(H_GEN) == gen and not board.get(H_STOP):
        rate = board.get(H_RATE_MILLI) / 1000
        if rate <= 0:
            await asyncio.sleep(_IDLE_S)
            continue
        due = started + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(min(delay, _IDLE_S * 10))  # Pacing, by design.
            continue
        t0 = time.perf_counter_ns()
        await publish(1)
        _account(board, H_PUBLISH_US, t0)
        sent += 1
        published += 1
        board.set(H_PUBLISHED, published)
    return published
