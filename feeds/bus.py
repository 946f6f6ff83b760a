"""The in-memory feed bus: Kafka's stand-in for ``oddstream dev`` and tests.

Same shape as the Kafka path: producers append feed messages to topics, a consumer
fetches records (topic, partition, offset, value) in batches. One partition per topic;
offsets count from 0. Bounded: a producer waits when the consumer is ``max_buffered``
records behind, as a Kafka producer would on a full buffer.
"""

from __future__ import annotations

import asyncio
from collections import deque

from feeds.model import FeedMessage, encode_feed, topic_of
from feeds.processor import FeedRecord


class MemoryBus:
    def __init__(self, max_buffered: int = 10_000):
        self._records: deque[FeedRecord] = deque()
        self._offsets: dict[str, int] = {}
        self._max = max_buffered
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.produced = 0

    async def send(self, message: FeedMessage) -> None:
        """Append a feed message to its topic (waits while the bus is full)."""
        await self.send_raw(topic_of(message), message.event_id.encode(), encode_feed(message))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        while len(self._records) >= self._max:
            self._writable.clear()
            await self._writable.wait()
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        self._records.append(FeedRecord(topic, 0, offset, value, key))
        self.produced += 1
        self._readable.set()

    async def fetch(self, max_records: int = 500, wait_s: float = 1.0) -> list[FeedRecord]:
        """Up to ``max_records`` records in produce order; [] after ``wait_s`` seconds
        with nothing to read."""
        if not self._records:
            self._readable.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._readable.wait()
            except TimeoutError:
                return []
        n = min(max_records, len(self._records))
        batch = [self._records.popleft() for _ in range(n)]
        self._writable.set()
        return batch
