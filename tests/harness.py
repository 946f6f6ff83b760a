"""One deployment harness for the tests that run real ``oddstream`` processes on real
Kafka and Redis (``tests/integration/test_distributed.py`` and the fault suite): an
isolated space (its own topic prefix, consumer group and Redis database) and the command
lines of the processes deployed in it."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
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
        delivery, not tokens: tests/security does), one process (a killed gateway is one
        process gone: tests/integration/test_workers.py tests several)."""
        serve = ("--redis", self.redis, "--redis-prefix", self.prefix, "--port", "0")
        serve += ("--workers", "1", "--log-level", "warning")
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


def free_ports(n: int) -> list[int]:
    """``n`` free ports on 127.0.0.1: in ``ODDSTREAM_TEST_PORTS`` (``low-high``) when set
    (a shared machine gives each developer a range), else any the system has free. Each
    is held until all are found, so none is returned twice."""
    low, _, high = os.environ.get("ODDSTREAM_TEST_PORTS", "0-0").partition("-")
    candidates = range(int(low), int(high) + 1) if int(low) else itertools.repeat(0, 100)
    found: list[int] = []
    with contextlib.ExitStack() as held:
        for candidate in candidates:
            s = held.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            found.append(s.getsockname()[1])
            if len(found) == n:
                return found
    raise AssertionError(f"no {n} free ports (ODDSTREAM_TEST_PORTS={low}-{high})")
