"""A client's bounded, conflating outgoing buffer.

Fan-out calls :meth:`Outbox.offer` synchronously; it never blocks and is O(1). Behind it
is a :class:`~channels.conflate.Conflator`: while the client keeps up, frames queue as
they are (shared bytes); once it falls behind (``soft_limit`` frames queued) or when it
asked for a conflation interval, a market's queued updates fold into one exact snapshot
(state changes kept, see :mod:`channels.conflate`). Past ``limit`` queued frames the
outbox is marked overflowed and stops accepting: the transport then closes the connection
with "reconnect and resume" (4001), and the client resumes from its last seq.

The writer takes frames in batches of at most ``batch``, so a backlog stays here, where
it can still be conflated, rather than in a batch already being written. The writer is
called back, never awaited: every offer that makes frames takeable calls ``waker``, and
the writer takes with :meth:`Outbox.take_now` (the WebSocket and SSE transports of
:mod:`server.streams`, no task per connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from channels.conflate import ConflationStats, Conflator
from channels.frame import Frame
from protocol import Snapshot

#: Frames taken per write batch.
BATCH = 64


class Outbox:
    __slots__ = (
        "_batch",
        "_clock",
        "_holding",
        "_queue",
        "_wake",
        "closed",
        "closing",
        "overflowed",
    )

    def __init__(
        self,
        limit: int,
        *,
        soft_limit: int | None = None,
        book_of: Callable[[str], Snapshot | None] | None = None,
        snapshot_frame: Callable[[Snapshot], Frame] = Frame,
        stats: ConflationStats | None = None,
        clock: Callable[[], float] | None = None,
        batch: int = BATCH,
        waker: Callable[[], None] | None = None,
    ):
        soft = limit // 4 if soft_limit is None else min(soft_limit, limit - 1)
        self._queue = Conflator(
            soft_limit=soft,
            hard_limit=limit,
            book_of=book_of or (lambda market_id: None),
            snapshot_frame=snapshot_frame,
            stats=stats,
        )
        self._clock = clock or asyncio.get_running_loop().time
        self._batch = batch
        self._holding = False
        self._wake = waker or _unwatched
        self.overflowed = False
        self.closed = False
        self.closing = False

    @property
    def interval_s(self) -> float:
        return self._queue.interval_s

    @interval_s.setter
    def interval_s(self, value: float) -> None:
        """The client's conflation interval (``conflate_ms`` / 1000; 0: off)."""
        if not self.closing:
            self._queue.interval_s = value
            self._holding = value > 0
            self._wake()

    def offer(self, frame: Frame) -> None:
        if self.overflowed or self.closed or self.closing:
            return
        queue = self._queue
        # The writer is woken when the queue stops being empty; until it has taken
        # everything it needs no further call (the WebSocket flush re-arms itself when a
        # batch leaves frames behind, an awaiting writer looks again before it sleeps).
        # With an interval, updates held for the next flush wake it only when one may go
        # at once (a state change, or the flush time passed).
        waiting = bool(queue)
        if not queue.offer(frame):
            self.overflowed = True
            queue.clear()
            self._wake()
        elif not waiting or (self._holding and queue.wait_s(self._clock()) == 0.0):
            self._wake()

    def pin(self, market_id: str) -> None:
        """The next frame of ``market_id`` goes out as it is, never conflated (resume)."""
        self._queue.pin(market_id)

    def close(self) -> None:
        """Stop at once; buffered frames are dropped."""
        self.closed = True
        self._wake()

    def finish(self) -> None:
        """Stop after the frames already buffered have been taken (used by drain); any
        conflation interval is lifted so they go at once."""
        self.closing = True
        self._queue.release_all()
        self._holding = False
        if not self._queue:
            self.closed = True
        self._wake()

    def take_now(self) -> list[Frame]:
        """The frames that may go now (at most one batch), without waiting: [] when there
        are none yet (see :meth:`due_s`), on overflow or on close (check the flags)."""
        if self.overflowed or self.closed:
            return []
        frames = self._queue.take(self._clock(), self._batch)
        if self.closing and not self._queue:
            self.closed = True
        return frames

    def due_s(self) -> float | None:
        """Seconds until :meth:`take_now` has frames: 0 now, None when the queue is empty."""
        queue = self._queue
        return queue.wait_s(self._clock()) if queue else None  # No clock read when idle.

    def __len__(self) -> int:
        return len(self._queue)


def _unwatched() -> None:
    """The waker of an outbox nobody is called back for (a caller that only takes)."""
