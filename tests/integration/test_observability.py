"""Stage stamps across the real hops (``docs/observability.md``): a feed message sent to
Kafka by :class:`KafkaFeedProducer`, applied by a :class:`BooksRunner`, stored and
published through Redis, received by a gateway's relay. The pub/sub payload carries the
envelope with the feed's own timestamp, the relay hands clients the bare message, each
process observes its stages once; the books' operator listener serves its metrics."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from channels.hub import Hub
from channels.metrics import REGISTRY, FanoutClock
from channels.names import market_channel
from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from channels.relay import Relay
from feeds.books_runner import BooksRunner
from feeds.embedded import now_ms
from feeds.kafka_feed import KafkaFeedProducer, TopicNames, ensure_topics
from feeds.observe import BooksCollector
from oddstream.ops import operator_listener
from tests.component.stack import event, match_result, odds
from tests.component.test_relay import watch
from tests.integration.test_kafka_books import config, new_group, running, wait_for

pytestmark = pytest.mark.integration


def stage_count(stage: str) -> float:
    return REGISTRY.get_sample_value("oddstream_stage_seconds_count", {"stage": stage}) or 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_stamps_travel_from_the_feed_through_kafka_and_redis_to_the_relay(
    kafka_bootstrap: str, topics: TopicNames, redis_url: str, redis_store: RedisStore
) -> None:
    event_id = f"ev{uuid.uuid4().hex[:8]}"
    market_id = f"{event_id}:1x2"
    await ensure_topics(kafka_bootstrap, 2, topics=topics)
    broker = await RedisBroker.connect(redis_url)
    payloads: list[bytes] = []
    tap = await broker.subscription(lambda _, payload: payloads.append(payload), lambda: None)
    await tap.subscribe(market_channel(market_id))
    relay = Relay(broker, redis_store, Hub(), clock=FanoutClock(time.monotonic))
    await relay.start()
    runner = BooksRunner(kafka_bootstrap, redis_store, broker, config=config(topics, new_group()))
    port = free_port()
    try:
        async with (
            running(runner),
            KafkaFeedProducer(kafka_bootstrap, topics=topics) as producer,
            operator_listener(
                "books", "127.0.0.1", port, lambda: runner.stats.rebalances > 0,
                [BooksCollector(runner)],
            ),
        ):  # fmt: skip
            ts = now_ms()
            await producer.send(event(event_id, ts=ts))
            await producer.send(match_result(event_id, ts=ts))
            await producer.flush()
            await wait_for([runner], lambda: runner.stats.records >= 2)
            client = await watch(relay, market_id)
            before = {s: stage_count(s) for s in ("feed_send", "kafka", "books", "redis")}
            pipeline = stage_count("pipeline")
            ts = now_ms()
            await producer.send(odds(market_id, ts, home="2.5"))
            await producer.flush()
            await client.until(market_id, 2)
            await wait_for([runner], lambda: runner.stats.records >= 3)  # Its step done.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ops:
                ready = (await ops.get("/readyz")).status_code
                text = (await ops.get("/metrics")).text
    finally:
        await relay.close()
        await tap.close()
        await broker.close()

    # On the wire through Redis: the envelope with the feed's own timestamp.
    delta = [p for p in payloads if b'"type":"delta"' in p]
    assert len(delta) == 1
    assert delta[0].startswith(b"~1 f=%d p=" % (ts * 1000))
    # The relay's client got the bare message.
    assert client.books.at(market_id) == 2
    # Books observed its stages once per step, the relay its own once per message.
    for stage in ("feed_send", "kafka", "books"):
        assert stage_count(stage) >= before[stage] + 1, stage
    assert stage_count("redis") == before["redis"] + 1
    assert stage_count("pipeline") == pipeline + 1
    # The books' operator listener.
    assert ready == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("oddstream_ready", ())] == 1
    assert samples[("oddstream_info", (("role", "books"), ("version", "0.1.0")))] == 1
    assert samples[("oddstream_markets_held", ())] == 1
    assert samples[("oddstream_books_records_total", ())] == 3
    lags = {labels: v for (name, labels), v in samples.items() if name == "oddstream_kafka_lag"}
    assert lags == {(("partition", "0"),): 0, (("partition", "1"),): 0}
    assert samples[("oddstream_step_size_count", ())] >= 2
    assert samples[("oddstream_redis_write_seconds_count", ())] >= 2
