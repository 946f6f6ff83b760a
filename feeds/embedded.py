"""The embedded pipeline of ``oddstream dev``: a feed source paced in real time, the
in-memory bus, and the book processor writing to a store and publishing on a broker —
the same processor and seams the distributed mode runs over Kafka and Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from itertools import count

import msgspec

from channels.store import Store
from feeds.bus import MemoryBus
from feeds.model import FeedMessage
from feeds.processor import Processor, Publisher, commit_step

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def epoch_minter(clock: Callable[[], int] = now_ms) -> Callable[[str], str]:
    """Epochs unique to this process run: its start time and a counter, base 36."""
    start = _b36(clock())
    counter = count(1)
    return lambda market_id: f"{start}{_b36(next(counter))}"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


class EmbeddedPipeline:
    """Feed source -> bus -> processor -> store + broker, in one process.

    ``rate`` is the number of feed messages per second taken from ``source``; each is
    stamped with the wall-clock time it is produced (the feed's own timestamp, from which
    end-to-end lag is measured). ``limit`` stops the feed after that many messages.
    """

    def __init__(
        self,
        source: Iterator[FeedMessage],
        store: Store,
        broker: Publisher,
        *,
        rate: float,
        limit: int | None = None,
        restamp: bool = True,
        clock: Callable[[], int] = now_ms,
    ):
        self.bus = MemoryBus()
        self.processor = Processor(epoch_minter(clock))
        self._source = source
        self._store = store
        self._broker = broker
        self._rate = rate
        self._limit = limit
        self._restamp = restamp
        self._clock = clock
        self.processed = 0
        self.dead_letters = 0
        self.feed_done = asyncio.Event()
        self.idle = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled (or, with ``limit``, until everything is processed)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._produce())
            tasks.create_task(self._process())

    async def _produce(self) -> None:
        started = time.monotonic()
        for sent, message in enumerate(self._source):
            if self._limit is not None and sent >= self._limit:
                break
            due = (time.monotonic() - started) * self._rate
            if sent >= due:
                await asyncio.sleep(min(0.05, (sent - due + 1) / self._rate))
            if self._restamp:
                message = msgspec.structs.replace(message, ts=self._clock())
            await self.bus.send(message)
        self.feed_done.set()

    async def _process(self) -> None:
        while True:
            records = await self.bus.fetch(max_records=500, wait_s=0.2)
            if not records:
                if self.feed_done.is_set():
                    self.idle.set()
                    if self._limit is not None:
                        return
                continue
            self.idle.clear()
            step = self.processor.process(records)
            for dead in step.dead_letters:
                self.dead_letters += 1
                log.warning(
                    "dead letter %s@%d: %s", dead.record.topic, dead.record.offset, dead.reason
                )
            await commit_step(step, self._store, self._broker)
            self.processed += len(records)
