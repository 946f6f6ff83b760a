"""``RedisStore.write_and_publish``, the processor's one write per step, against a real
redis-server: a batch and its messages in one MULTI/EXEC, packed and read without a
redis-py pipeline. What a step writes is stored, each channel gets its messages in
order, ``sent`` says when Redis has the transaction, and a failed or cancelled write
leaves the connection fit for the next one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from channels.redis_store import RedisStore
from channels.store import Batch, StoreError
from tests.integration.conftest import HISTORY
from tests.integration.test_redis import E1, advance, create, snapshot

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture
async def listener(redis_url: str) -> AsyncIterator[aioredis.client.PubSub]:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def received(
    pubsub: aioredis.client.PubSub, count: int, prefix: str
) -> list[tuple[str, bytes]]:
    """``count`` messages, each with its channel as the store was asked (without the
    deployment prefix the store publishes under)."""
    out: list[tuple[str, bytes]] = []
    async with asyncio.timeout(WAIT):
        while len(out) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                channel = message["channel"].decode()
                assert channel.startswith(prefix)
                out.append((channel.removeprefix(prefix), message["data"]))
    return out


async def test_a_step_is_stored_and_each_channel_gets_its_messages_in_order(
    redis_store: RedisStore, listener: aioredis.client.PubSub, prefix: str
) -> None:
    tag = uuid.uuid4().hex
    m, e, lobby = f"{tag}:m", f"{tag}:e", f"{tag}:l"
    await listener.subscribe(*(prefix + c for c in (m, e, lobby)))
    batch = advance("m1", 2, 7, main=True)
    batch.offsets[("odds", 0)] = 8
    batch.partitions["ev1"] = 0
    payloads = [p for _, _, p in batch.history]
    # The same channel set as a tuple and as a list; another set in between.
    publications: list[tuple[Sequence[str], bytes]] = []
    for i, payload in enumerate(payloads):
        channels: Sequence[str] = (m, e, lobby) if i % 2 else [m, e, lobby]
        publications.append((channels, payload))
        publications.append(((e,), b"event-%d" % i))
    sent = asyncio.Event()
    await redis_store.write(create("m1", main=True))
    await redis_store.write_and_publish(batch, publications, sent=sent)
    assert sent.is_set()

    messages = await received(listener, 3 * len(payloads) + len(payloads), prefix)
    by_channel: dict[str, list[bytes]] = {}
    for channel, data in messages:
        by_channel.setdefault(channel, []).append(data)
    assert by_channel[m] == payloads
    assert by_channel[lobby] == payloads
    assert by_channel[e] == [x for i, p in enumerate(payloads) for x in (p, b"event-%d" % i)]
    assert await redis_store.snapshot("m1") == batch.snapshots["m1"]
    assert await redis_store.history("m1", E1, 7 - HISTORY) == payloads[-HISTORY:]
    assert await redis_store.offsets("odds", 0) == 8
    snaps, _ = await redis_store.load_partition(0)
    assert [s.market_id for s in snaps] == ["m1"]


async def test_a_large_step(
    redis_store: RedisStore, listener: aioredis.client.PubSub, prefix: str
) -> None:
    """Thousands of deltas over many markets, in one transaction."""
    tag = uuid.uuid4().hex
    await listener.subscribe(f"{prefix}{tag}:all")
    batch = Batch()
    publications: list[tuple[Sequence[str], bytes]] = []
    for n in range(50):
        part = advance(f"m{n:02}", 2, 101)
        batch.snapshots.update(part.snapshots)
        batch.history += part.history
        publications += [((f"{tag}:all", f"{tag}:{n}"), p) for _, _, p in part.history]
    await redis_store.write_and_publish(batch, publications)
    messages = await received(listener, len(publications), prefix)
    assert [data for _, data in messages] == [p for _, p in publications]
    for n in (0, 49):
        history = await redis_store.history(f"m{n:02}", E1, 101 - HISTORY)
        assert history == [p for m, _, p in batch.history if m == f"m{n:02}"][-HISTORY:]


async def test_a_refused_write_leaves_the_connection_in_step(
    redis_store: RedisStore, redis_url: str, prefix: str
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.set(f"{prefix}offsets", b"not a hash")
        with pytest.raises(StoreError, match="write"):
            await redis_store.write_and_publish(
                Batch(snapshots={"m1": snapshot("m1")}, offsets={("odds", 0): 1}), []
            )
        await admin.delete(f"{prefix}offsets")
    finally:
        await admin.aclose()
    # Every reply of the failed transaction was read: the next commands get their own.
    await redis_store.write_and_publish(Batch(snapshots={"m2": snapshot("m2", 3)}), [])
    assert await redis_store.snapshot("m2") == snapshot("m2", 3)
    assert await redis_store.offsets("odds", 0) is None


async def test_a_cancelled_write_leaves_no_stray_replies(redis_store: RedisStore) -> None:
    batch = Batch()
    for n in range(20):
        part = advance(f"m{n:02}", 2, 201)
        batch.snapshots.update(part.snapshots)
        batch.history += part.history
    publications = [(("oddstream-test:nobody",), p) for _, _, p in batch.history]
    sent = asyncio.Event()
    write = asyncio.create_task(redis_store.write_and_publish(batch, publications, sent=sent))
    await sent.wait()
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    # Whether or not the transaction ran, reads on the pool get their own replies.
    for _ in range(3):
        assert await redis_store.snapshot("nothing-here") is None
        assert await redis_store.offsets("odds", 9) is None
    await redis_store.write(create("m-after", 5))
    assert await redis_store.snapshot("m-after") == snapshot("m-after", 5)


async def test_sent_is_set_for_an_empty_step(redis_store: RedisStore) -> None:
    sent = asyncio.Event()
    await redis_store.write_and_publish(Batch(), [], sent=sent)
    assert sent.is_set()
