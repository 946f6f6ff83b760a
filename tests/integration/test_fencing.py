"""Fencing on a real Redis: two writers (two processors' stores) on one partition; the
older owner's writes are refused whole, including when the new owner claims the partition
between the older one's check and its transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

import protocol
from channels.fencing import FencedError
from channels.redis_store import RedisStore
from channels.store import OUTBOX_KEEP, Batch, MemoryStore, Store
from tests.integration.conftest import HISTORY
from tests.integration.test_redis import delta, snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
async def writers(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one key prefix, as two processors have."""
    a = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=prefix)
    b = await RedisStore.connect(redis_url, history_size=HISTORY, prefix=prefix)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def step(seq: int, token: int) -> Batch:
    return Batch(
        snapshots={"m1": snapshot("m1", seq)},
        history=[("m1", seq, protocol.encode(delta("m1", seq)))],
        offsets={("odds", 0): seq},
        partitions={"ev1": 0},
        fence={0: token},
    )


async def test_the_older_owner_is_refused_and_writes_nothing(
    writers: tuple[RedisStore, RedisStore], redis_url: str, prefix: str
) -> None:
    old_store, new_store = writers
    old = await old_store.claim(0)
    await old_store.write(step(1, old))
    new = await new_store.claim(0)
    assert new > old
    channel = "m1"  # Published under the store's prefix, as every route is.
    admin = aioredis.Redis.from_url(redis_url)
    pubsub = admin.pubsub()
    messages: list[bytes] = []
    try:
        await pubsub.subscribe(prefix + channel)
        with pytest.raises(FencedError, match="newer owner"):
            await old_store.write_and_publish(step(2, old), [((channel,), b"x")])
        await new_store.write_and_publish(step(2, new), [((channel,), b"y")])
        # Delivered in order: everything published before the new owner's message has
        # arrived once it has.
        async with asyncio.timeout(10):
            while b"y" not in messages:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    messages.append(message["data"])
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await admin.aclose()
    assert messages == [b"y"]
    assert (await new_store.snapshot("m1")) == snapshot("m1", 2)
    assert await new_store.offsets("odds", 0) == 2
    assert await old_store.history("m1", "e1", 0) is not None


async def test_a_claim_between_the_check_and_the_transaction_refuses_it(
    writers: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old owner's fence keys are WATCHed and read (its token is still the latest);
    the new owner claims the partition before the old owner's MULTI/EXEC reaches Redis:
    Redis refuses the EXEC, nothing is written."""
    old_store, new_store = writers
    old = await old_store.claim(0)
    await old_store.write(step(1, old))
    send = Connection.send_packed_command
    claimed: list[int] = []

    async def claim_first(self: Connection, command: Any, check_health: bool = True) -> None:
        if (
            isinstance(command, list)
            and command[0].startswith(b"*1\r\n$5\r\nMULTI")
            and not claimed
        ):
            claimed.append(await new_store.claim(0))
        await send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", claim_first)
    with pytest.raises(FencedError, match="claimed anew"):
        await old_store.write(step(2, old))
    monkeypatch.undo()
    assert claimed == [old + 1]
    assert (await new_store.snapshot("m1")) == snapshot("m1", 1)
    assert await new_store.offsets("odds", 0) == 1


async def test_a_fence_lost_with_the_data_is_set_again_by_the_owner(
    writers: tuple[RedisStore, RedisStore], redis_url: str, prefix: str
) -> None:
    """Redis lost the fence key (the data): the owner's next write sets its token again,
    and the older owner is refused from then on."""
    old_store, owner = writers
    old = await old_store.claim(0)
    token = await owner.claim(0)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.delete(f"{prefix}fence:0")
        await owner.write(step(1, token))
        assert await admin.get(f"{prefix}fence:0") == b"%d" % token
    finally:
        await admin.aclose()
    with pytest.raises(FencedError):
        await old_store.write(step(2, old))


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_outbox_keeps_the_last_entries_of_each_partition(
    kind: str, writers: tuple[RedisStore, RedisStore]
) -> None:
    store: Store = MemoryStore() if kind == "memory" else writers[0]
    end = OUTBOX_KEEP + 3
    for n in range(1, end):
        await store.write(Batch(outbox={0: b"p0-%d" % n, **({1: b"p1"} if n == 1 else {})}))
    assert await store.outbox(0) == [b"p0-%d" % n for n in range(end - OUTBOX_KEEP, end)]
    assert await store.outbox(1) == [b"p1"]
    assert await store.outbox(2) == []
