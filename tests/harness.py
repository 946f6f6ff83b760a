"""One deployment harness for the tests that run real ``oddstream`` processes on real
Kafka and Redis (``tests/integration/test_distributed.py`` and the fault suite): an
isolated space (its own topic prefix, consumer group and Redis database) and the command
lines of the processes deployed in it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

#: Partitions of every feed topic a deployment creates.
PARTITIONS = 4


@dataclass
class Space:
    """Where one deployment lives: nothing of another test's is visible in it."""

    kafka: str
    redis: str
    prefix: str
    group: str

    def feed_args(self, *, seed: int, events: int, rate: float, limit: int) -> list[str]:
        """``oddstream feed synth``: the seeded match day, paced, ``limit`` messages."""
        return [
            "feed", "synth", "--kafka", self.kafka, "--topic-prefix", self.prefix,
            "--seed", str(seed), "--events", str(events), "--rate", str(rate),
            "--limit", str(limit), "--partitions", str(PARTITIONS),
        ]  # fmt: skip

    def books_args(self, *extra: str, log_level: str = "warning") -> list[str]:
        """``oddstream books`` in the space's group."""
        return [
            "books", "--kafka", self.kafka, "--redis", self.redis, "--redis-prefix", self.prefix,
            "--group", self.group,
            "--topic-prefix", self.prefix, "--partitions", str(PARTITIONS),
            "--log-level", log_level, *extra,
        ]  # fmt: skip

    def gateway_args(self, *extra: str) -> list[str]:
        """``oddstream gateway`` on a free port, open to anonymous clients (the suites test
        delivery, not tokens: tests/security does)."""
        serve = ("--redis", self.redis, "--redis-prefix", self.prefix, "--port", "0")
        serve += ("--log-level", "warning")
        return ["gateway", "--auth", "none", *serve, *extra]


async def isolated(kafka: str, redis_url: str, db: int, tag: str) -> Space:
    """A space in Redis database ``db`` (flushed first) with topics and a group named
    after a fresh id (``tag`` tells the suites' topics apart)."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    client = aioredis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    uid = uuid.uuid4().hex[:8]
    return Space(kafka, url, f"{tag}{uid}.", f"g{uid}")
