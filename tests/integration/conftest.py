"""Shared fixtures of the integration tests: where the real services are.

``scripts/services.sh up`` starts Kafka and Redis and prints ``ODDSTREAM_KAFKA`` and
``ODDSTREAM_REDIS``; a developer's own stack may set them instead. A missing variable
*fails* the test that needs it: integration tests are never silently skipped (in CI a
skip would look like a pass).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from channels.redis_store import RedisStore
from feeds.kafka_feed import TopicNames

HISTORY = 4
"""History size of the Redis stores under test: small, so trimming is easy to reach."""

_HOW = 'start the services with: set -a; eval "$(scripts/services.sh up cluster)"; set +a'


def _required(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"{name} is not set: integration tests need the real service "
            f"(e.g. {name}={example}); {_HOW}",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis URL from ``ODDSTREAM_REDIS``, e.g. ``redis://127.0.0.1:16379/0``."""
    return _required("ODDSTREAM_REDIS", "redis://127.0.0.1:16379/0")


@pytest.fixture(scope="session")
def cluster_url() -> str:
    """The Redis Cluster of ``ODDSTREAM_REDIS_CLUSTER`` (``scripts/services.sh up cluster``)
    as a ``redis+cluster://`` URL."""
    value = _required("ODDSTREAM_REDIS_CLUSTER", "redis://127.0.0.1:17400")
    return "redis+cluster" + value.removeprefix("redis")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers from ``ODDSTREAM_KAFKA``, e.g. ``127.0.0.1:19092``."""
    return _required("ODDSTREAM_KAFKA", "127.0.0.1:19092")


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[TopicNames]:
    """Topic names of one test (a prefix of its own, so tests sharing a broker do not see
    each other), deleted afterwards."""
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:12]}-")
    yield names
    admin: Any = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    async with asyncio.timeout(20):
        await admin.start()
        try:
            await admin.delete_topics([*names.feed, names.deltas, names.deadletter])
        finally:
            await admin.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of one test's own."""
    return f"oddstream-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    store = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        await purge(redis_url, prefix)


async def purge(url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
