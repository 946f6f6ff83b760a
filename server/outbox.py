"""A client's bounded outgoing buffer.

Fan-out calls :meth:`Outbox.offer` synchronously; it never blocks. Past ``limit`` frames
the outbox is marked overflowed and stops accepting: the transport then closes the
connection with a "reconnect and resume" code, and the client resumes from its last seq
(conflation of slow clients is a later refinement of this policy).
"""

from __future__ import annotations

import asyncio
from collections import deque

from channels.frame import Frame


class Outbox:
    __slots__ = ("_frames", "_limit", "_ready", "closed", "closing", "overflow", "overflowed")

    def __init__(self, limit: int):
        self._frames: deque[Frame] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.closing = False
        # Set on overflow, so the transport can act even while its writer is stuck in a
        # send to a client that stopped reading.
        self.overflow = asyncio.Event()

    def offer(self, frame: Frame) -> None:
        if self.overflowed or self.closed or self.closing:
            return
        if len(self._frames) >= self._limit:
            self.overflowed = True
            self._frames.clear()
            self.overflow.set()
        else:
            self._frames.append(frame)
        self._ready.set()

    def close(self) -> None:
        """Stop at once; buffered frames are dropped."""
        self.closed = True
        self._ready.set()

    def finish(self) -> None:
        """Stop after the frames already buffered have been taken (used by drain)."""
        self.closing = True
        if not self._frames:
            self.closed = True
        self._ready.set()

    async def take(self, wait_s: float) -> list[Frame]:
        """Every buffered frame, waiting up to ``wait_s`` s for one; [] on timeout, on
        overflow or on close (check the flags)."""
        if not self._frames and not self.overflowed and not self.closed:
            self._ready.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
            except TimeoutError:
                return []
        if self.overflowed or self.closed:
            return []
        frames = list(self._frames)
        self._frames.clear()
        if self.closing:
            self.closed = True  # The next take reports the close.
        return frames

    def __len__(self) -> int:
        return len(self._frames)
