"""The Redis keys of an ended event expire (``finished_ttl_s``), set in the write that ended
it and in every later one; the keys of events not ended have no TTL."""

from __future__ import annotations

import itertools

import redis.asyncio as aioredis

from channels.redis_store import RedisStore
from feeds.embedded import epoch_minter
from feeds.eviction import recall
from feeds.model import FeedEvent, encode_feed, topic_of
from feeds.processor import FeedRecord, Processor
from feeds.synthetic import MatchDay

TTL_S = 3600


async def test_ended_events_keys_expire_and_live_ones_do_not(
    redis_store: RedisStore, redis_url: str, prefix: str
) -> None:
    # Retention on too: markets settled before the end are forgotten by then, and their
    # keys must expire all the same.
    processor = Processor(epoch_minter(lambda: 0), retention_s=1.0, finished_ttl_s=TTL_S)
    ended: list[str] = []
    for offset, message in enumerate(
        itertools.islice(MatchDay(seed=5, events=3, odds_interval_ms=30_000), 4000)
    ):
        record = FeedRecord(topic_of(message), 0, offset, encode_feed(message))
        now = message.ts / 1000
        step = processor.process([record], now=now)
        while (lookup := step.lookup) is not None:
            processor.recover(await recall(redis_store, lookup, processor.books.markets), now)
            step = processor.process([record], now=now, step=step)
        await redis_store.write(step.batch)
        processor.evict(now)
        if isinstance(message, FeedEvent) and message.phase == "ended":
            ended.append(message.event_id)
    assert ended
    client = aioredis.from_url(redis_url)
    try:
        for event_id in ended:
            markets = await redis_store.market_ids(event_id)
            assert markets
            keys = [f"{prefix}event:{event_id}", f"{prefix}event-markets:{event_id}"]
            keys += [f"{prefix}snap:{m}" for m in markets]
            for key in keys:
                assert 0 < await client.pttl(key) <= TTL_S * 1000, key
        live = [e for e in (s.event_id for s in await redis_store.events()) if e not in ended]
        assert live
        for event_id in live:
            keys = [f"{prefix}event:{event_id}"]
            keys += [f"{prefix}snap:{m}" for m in await redis_store.market_ids(event_id)]
            for key in keys:
                assert await client.pttl(key) == -1, key
    finally:
        await client.aclose()
