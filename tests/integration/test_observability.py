"""Stage stamps across the real hops (``docs/observability.md``): a feed message sent to
Kafka by :class:`KafkaFeedProducer`, applied by a :class:`BooksRunner`, stored and
published through Redis, received by a gateway's relay. The pub/sub payload carries the
envelope with the feed's own timestamp, the relay hands clients the bare message, each
process observes its stages once; the books' operator listener serves its metrics."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from prometheus_client.parser import text_string_to_metric_families

from channels import traces
from channels.hub import Hub
from channels.metrics import REGISTRY, FanoutClock
from channels.names import route
from channels.redis_broker import RedisBroker
from channels.redis_store import RedisStore
from channels.relay import Relay
from feeds.books_runner import BooksRunner
from feeds.embedded import now_ms
from feeds.kafka_feed import KafkaFeedProducer, TopicNames, ensure_topics
from feeds.observe import BooksCollector
from oddstream.ops import operator_listener
from tests.component.stack import event, match_result, odds
from tests.component.test_relay import Collector, watch
from tests.integration.test_kafka_books import config, new_group, running, wait_for

pytestmark = pytest.mark.integration


def stage_count(stage: str) -> float:
    return REGISTRY.get_sample_value("oddstream_stage_seconds_count", {"stage": stage}) or 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pipeline:
    """Feed producer -> Kafka -> a book processor -> Redis -> a gateway's relay, in this
    process (each a real component over the real services), with one market defined and
    a client of the relay watching it; every pub/sub payload of the market is kept."""

    producer: KafkaFeedProducer
    runner: BooksRunner
    market_id: str
    client: Collector
    payloads: list[bytes]

    async def price(self, price: str) -> int:
        """Send a price change; returns its feed timestamp once the client has it and its
        step is done."""
        ts = now_ms()
        seq = self.client.books.at(self.market_id)
        records = self.runner.stats.records
        await self.producer.send(odds(self.market_id, ts, home=price))
        await self.producer.flush()
        await self.client.until(self.market_id, seq + 1)
        await wait_for([self.runner], lambda: self.runner.stats.records > records)
        return ts


@contextlib.asynccontextmanager
async def pipeline(
    kafka: str, topics: TopicNames, redis_url: str, store: RedisStore, ops_port: int = 0
) -> AsyncIterator[Pipeline]:
    """A :class:`Pipeline`; with ``ops_port``, the processor's operator listener too."""
    event_id = f"ev{uuid.uuid4().hex[:8]}"
    market_id = f"{event_id}:1x2"
    await ensure_topics(kafka, 2, topics=topics)
    broker = await RedisBroker.connect(redis_url)
    payloads: list[bytes] = []
    tap = await broker.subscription(lambda _, payload: payloads.append(payload), lambda: None)
    await tap.subscribe(route("football", event_id))  # Where books publish the event.
    relay = Relay(broker, store, Hub(), clock=FanoutClock(time.monotonic))
    await relay.start()
    runner = BooksRunner(kafka, store, broker, config=config(topics, new_group()))
    ready = lambda: runner.stats.rebalances > 0  # noqa: E731
    try:
        async with (
            running(runner),
            KafkaFeedProducer(kafka, topics=topics) as producer,
            operator_listener("books", "127.0.0.1", ops_port, ready, [BooksCollector(runner)]),
        ):
            ts = now_ms()
            await producer.send(event(event_id, ts=ts))
            await producer.send(match_result(event_id, ts=ts))
            await producer.flush()
            await wait_for([runner], lambda: runner.stats.records >= 2)
            client = await watch(relay, market_id)
            yield Pipeline(producer, runner, market_id, client, payloads)
    finally:
        await relay.close()
        await tap.close()
        await broker.close()


async def test_stamps_travel_from_the_feed_through_kafka_and_redis_to_the_relay(
    kafka_bootstrap: str, topics: TopicNames, redis_url: str, redis_store: RedisStore
) -> None:
    port = free_port()
    async with pipeline(kafka_bootstrap, topics, redis_url, redis_store, port) as flow:
        before = {s: stage_count(s) for s in ("feed_send", "kafka", "books", "redis")}
        pipeline_count = stage_count("pipeline")
        ts = await flow.price("2.5")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ops:
            ready = (await ops.get("/readyz")).status_code
            text = (await ops.get("/metrics")).text
    payloads, client, market_id = flow.payloads, flow.client, flow.market_id

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
    assert stage_count("pipeline") == pipeline_count + 1
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


async def test_one_trace_joins_feed_books_and_gateway_for_a_sampled_message(
    kafka_bootstrap: str, topics: TopicNames, redis_url: str, redis_store: RedisStore
) -> None:
    """The feed, the book processor and the gateway's relay run in this process (as real
    components over the real Kafka and Redis) so one in-memory exporter sees every span;
    between them the context travels as it does between processes: Kafka header, then the
    pub/sub envelope."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with pipeline(kafka_bootstrap, topics, redis_url, redis_store) as flow:
        traces.install(provider)
        try:
            await flow.price("2.5")
        finally:
            traces.uninstall()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["books.step", "feed.send", "gateway.fanout"]
    send, step, fanout = spans["feed.send"], spans["books.step"], spans["gateway.fanout"]
    assert send.parent is None
    assert step.parent is not None
    assert step.parent.span_id == send.context.span_id
    assert fanout.parent is not None
    assert fanout.parent.span_id == step.context.span_id
    assert {s.context.trace_id for s in spans.values()} == {send.context.trace_id}
    assert fanout.attributes is not None
    assert fanout.attributes["oddstream.fanout.subscribers"] == 1
    # The context travelled in the envelope, never to the client.
    delta = next(p for p in flow.payloads if b'"type":"delta"' in p)
    assert b" t=00-%032x-" % send.context.trace_id in delta.partition(b"\n")[0]
