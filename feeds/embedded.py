"""The embedded pipeline of ``oddstream dev``: a paced feed, the in-memory bus, and the
book processor writing to a store and publishing on a broker, with the feed-staleness
guard ticking on the wall clock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import count

import msgspec

from channels.store import Store
from feeds.bus import MemoryBus
from feeds.model import FeedMessage
from feeds.processor import Processor, Publisher, commit_step
from feeds.staleness import STALE_AFTER_S

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tick_interval(stale_after_s: float) -> float:
    """How often the staleness guard looks: often enough that a silence is noticed within
    a small fraction of the bound."""
    return min(1.0, stale_after_s / 4)


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


async def rated(
    messages: Iterable[FeedMessage],
    rate: float,
    *,
    restamp: bool = True,
    clock: Callable[[], int] = now_ms,
) -> AsyncIterator[FeedMessage]:
    """Yield ``rate`` messages per second; with ``restamp`` each gets the wall-clock time it
    is emitted as its ``ts`` (the synthetic feed's own timestamp, for end-to-end lag)."""
    started = time.monotonic()
    for sent, message in enumerate(messages):
        due = (time.monotonic() - started) * rate
        if sent >= due:
            await asyncio.sleep(min(0.05, (sent - due + 1) / rate))  # Pacing by design.
        yield msgspec.structs.replace(message, ts=clock()) if restamp else message


class EmbeddedPipeline:
    """Feed -> in-memory bus -> processor -> store + broker, in one process: the same
    processor and seams the distributed mode runs over Kafka and Redis.

    ``feed`` is already paced (see :func:`rated` and :func:`feeds.replay.paced`). When it
    ends, :attr:`idle` is set once everything it produced has been processed.
    ``stale_after_s`` bounds the feed's silence about an event before its open markets
    are suspended (``None``: never); ``clock`` (epoch ms) stamps those suspensions and
    ``monotonic`` (seconds) measures the silence.
    """

    def __init__(
        self,
        feed: AsyncIterator[FeedMessage],
        store: Store,
        broker: Publisher,
        *,
        clock: Callable[[], int] = now_ms,
        stale_after_s: float | None = STALE_AFTER_S,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.bus = MemoryBus()
        self.processor = Processor(epoch_minter(clock), stale_after_s=stale_after_s)
        self._clock = clock
        self._monotonic = monotonic
        self._tick_s = tick_interval(stale_after_s) if stale_after_s else None
        self._feed = feed
        self._store = store
        self._broker = broker
        self.processed = 0
        self.dead_letters = 0
        self.feed_done = asyncio.Event()
        self.idle = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled; returns once a finite feed is fully processed."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._produce())
            tasks.create_task(self._process())

    async def _produce(self) -> None:
        async for message in self._feed:
            await self.bus.send(message)
        self.feed_done.set()

    async def _process(self) -> None:
        ticked = self._monotonic()
        while True:
            records = await self.bus.fetch(max_records=500, wait_s=0.2)
            now = self._monotonic()
            if records:
                step = self.processor.process(records, now=now)
                for dead in step.dead_letters:
                    self.dead_letters += 1
                    log.warning(
                        "dead letter %s@%d: %s", dead.record.topic, dead.record.offset, dead.reason
                    )
                await commit_step(step, self._store, self._broker)
                self.processed += len(records)
            elif self.feed_done.is_set():
                self.idle.set()
                return
            # After the records: an event heard in this batch is not stale.
            if self._tick_s is not None and now - ticked >= self._tick_s:
                ticked = now
                tick = self.processor.tick(now, self._clock())
                if tick.publications:
                    await commit_step(tick, self._store, self._broker)
