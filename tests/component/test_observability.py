"""The gateway's side of ``docs/observability.md``: the operator ``/metrics`` in
Prometheus' format with the documented names and bounded labels, and the pub/sub
envelope: stripped before clients see anything, timed into the gateway's stages, old
(bare) payloads still accepted, a broken header counted and the message delivered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

import protocol
from channels.metrics import REGISTRY
from channels.stamps import envelope, now_us
from protocol import Delta
from tests.component.stack import (
    T0,
    Stack,
    WsClient,
    event,
    match_result,
    odds,
    running_stack,
    sse_messages,
    ws_client,
)

M1 = "fb-1:1x2"

#: Every label value the contract allows, per family and label.
BOUNDED = {
    ("oddstream_stream_connections", "transport"): {"ws", "sse"},
    ("oddstream_stream_connections", "subprotocol"): {"json", "msgpack", "none"},
    ("oddstream_subscriptions", "kind"): {"market", "event", "lobby"},
    ("oddstream_closes_total", "reason"): {
        "slow",
        "dead",
        "unauthorised",
        "token_expired",
        "rate_limited",
    },
    ("oddstream_resumes_total", "outcome"): {"exact", "reset"},
    ("oddstream_stage_seconds_bucket", "stage"): {
        "feed_send",
        "kafka",
        "books",
        "redis",
        "gateway",
        "pipeline",
    },
}


async def scrape(stack: Stack) -> Samples:
    """Every sample of the operator ``/metrics``, parsed as Prometheus parses it."""
    async with httpx.AsyncClient() as http:
        response = await http.get(stack.ops_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def packed_message(conn: ClientConnection) -> protocol.ServerMessage:
    raw = await conn.recv()
    assert isinstance(raw, bytes)
    return protocol.decode_server_msgpack(raw)


def stage_count(stage: str) -> float:
    return REGISTRY.get_sample_value("oddstream_stage_seconds_count", {"stage": stage}) or 0.0


def metric_count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_operator_metrics_are_prometheus_text_with_bounded_labels() -> None:
    async with running_stack(ops=True) as stack:
        await stack.feed.send(event(), match_result())
        async with (
            ws_client(stack, subprotocols=["oddstream.v1.json"]) as json_client,
            ws_client(stack, subprotocols=["oddstream.v1.msgpack"]) as packed,
            httpx.AsyncClient(base_url=stack.url) as http,
        ):
            await json_client.send({"type": "subscribe", "markets": [M1]})
            await json_client.until(lambda m: isinstance(m, protocol.Snapshot))
            await packed.send({"type": "subscribe", "events": ["fb-1"], "lobbies": ["football"]})
            async with asyncio.timeout(5):
                while not isinstance(await packed_message(packed.conn), protocol.Snapshot):
                    pass
            sse = sse_messages(http, f"/sse?markets={M1}")
            await anext(sse)  # The stream is open and subscribed.
            samples = await scrape(stack)
            await sse.aclose()

    assert value(samples, "oddstream_connections") == 3
    for transport, subprotocol in (("ws", "json"), ("ws", "msgpack"), ("sse", "none")):
        labels = {"transport": transport, "subprotocol": subprotocol}
        assert value(samples, "oddstream_stream_connections", **labels) == 1, labels
    assert value(samples, "oddstream_subscriptions", kind="market") == 2
    assert value(samples, "oddstream_subscriptions", kind="event") == 1
    assert value(samples, "oddstream_subscriptions", kind="lobby") == 1
    assert value(samples, "oddstream_outbox_depth_gcount") == 3
    assert value(samples, "oddstream_ready") == 1
    assert value(samples, "oddstream_closes_total", reason="slow") == 0
    assert value(samples, "oddstream_resumes_total", outcome="exact") == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    for name in (
        "oddstream_deliveries_total",
        "oddstream_fanout_seconds_count",
        "oddstream_heartbeats_total",
    ):
        assert (name, frozenset()) in samples, name
    for (name, labels), _ in samples.items():
        for label, label_value in labels:
            allowed = BOUNDED.get((name, label))
            if allowed is not None:
                assert label_value in allowed, (name, label, label_value)
    market_labels = [(name, labels) for name, labels in samples if any(v == M1 for _, v in labels)]
    assert market_labels == [], "never a market id as a label"


@contextlib.asynccontextmanager
async def watching(**settings: str) -> AsyncIterator[tuple[Stack, WsClient]]:
    """A gateway with one market, and a WebSocket client subscribed to it."""
    async with running_stack(ops=True, **settings) as stack:
        await stack.feed.send(event(), match_result())
        async with ws_client(stack) as client:
            await client.send({"type": "subscribe", "markets": [M1]})
            await client.until(lambda m: isinstance(m, protocol.Snapshot))
            yield stack, client


async def test_stamped_payloads_reach_clients_bare_and_are_timed() -> None:
    async with watching() as (stack, client):
        before = {s: stage_count(s) for s in ("redis", "pipeline", "gateway")}
        fanouts = metric_count("oddstream_fanout_seconds_count")
        sent_us = now_us()
        await stack.feed.send(
            odds(M1, T0 + 10, home="2.5"), head=envelope(sent_us - 3_000, sent_us)
        )
        raw = await asyncio.wait_for(client.conn.recv(), 5)
        await stack.feed.send(odds(M1, T0 + 20, home="2.6"))  # A bare payload.
        bare = await asyncio.wait_for(client.conn.recv(), 5)
        samples = await scrape(stack)

    # The client receives exactly the protocol message: no envelope, for both.
    assert isinstance(raw, str)
    assert isinstance(protocol.decode_server(raw), Delta)
    assert raw.startswith('{"type":"delta"')
    assert isinstance(bare, str)
    assert bare.startswith('{"type":"delta"')
    # One stamped message: each gateway stage observed once (the bare one in none).
    assert stage_count("redis") == before["redis"] + 1
    assert stage_count("pipeline") == before["pipeline"] + 1
    assert stage_count("gateway") == before["gateway"] + 1
    assert metric_count("oddstream_fanout_seconds_count") == fanouts + 1
    # The pipeline stage spans the stamps' 3 ms and more, never less.
    assert value(samples, "oddstream_stage_seconds_bucket", stage="pipeline", le="0.002") <= (
        value(samples, "oddstream_stage_seconds_bucket", stage="pipeline", le="+Inf") - 1
    )


async def test_a_broken_envelope_is_counted_and_its_message_delivered() -> None:
    async with watching() as (stack, client):
        await stack.feed.send(odds(M1, T0 + 10, home="2.5"), head=b"~1 p=soon\n")
        delta = await client.until(lambda m: isinstance(m, Delta))
        # Another version of the envelope: no stamps, not an error either.
        await stack.feed.send(odds(M1, T0 + 20, home="2.6"), head=b"~2 x=1\n")
        later = await client.until(lambda m: isinstance(m, Delta))
    assert isinstance(delta, Delta)
    assert isinstance(later, Delta)
    assert later.seq == delta.seq + 1
    assert stack.gateway.relay.stats.bad_envelopes == 1


async def test_metrics_off_observes_nothing_per_message() -> None:
    async with watching(metrics="off") as (stack, client):
        before = stage_count("redis"), metric_count("oddstream_fanout_seconds_count")
        sent_us = now_us()
        await stack.feed.send(odds(M1, T0 + 10, home="2.5"), head=envelope(None, sent_us))
        raw = await asyncio.wait_for(client.conn.recv(), 5)
    assert isinstance(raw, str)
    assert raw.startswith('{"type":"delta"')
    assert (stage_count("redis"), metric_count("oddstream_fanout_seconds_count")) == before
