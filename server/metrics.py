"""A gateway's metrics, read when ``/metrics`` is scraped (``docs/observability.md``).

The gateway keeps its counts as plain integers (:class:`~server.gateway.GatewayStats`,
the relay's, the hub's, the edge's): this collector turns them into Prometheus families
at scrape time, so nothing on the delivery path pays for them. Its histograms are
observed by :class:`channels.metrics.FanoutClock` (once per message or flush pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from server.admission import Admission
from server.gateway import Gateway
from server.streams import Streams

#: Upper bounds of ``oddstream_outbox_depth`` (frames queued per connection).
DEPTH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

#: The session counters exported under their own names since before this collector.
_SESSION_COUNTERS = ("rate_limited_commands", "rate_limit_closes", "token_expired_closes")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class GatewayCollector(Collector):
    """Every count of one gateway node, its edge (``admission``) and its streaming
    connections (``streams``), as of the scrape."""

    def __init__(
        self, gateway: Gateway, admission: Admission | None = None, streams: Streams | None = None
    ):
        self._gateway = gateway
        self._admission = admission
        self._streams = streams

    def collect(self) -> Iterable[Metric]:
        yield from self._sessions()
        yield from self._delivery()
        yield from self._relay()
        if self._admission is not None:
            yield from _edge(self._admission)
        if self._streams is not None:
            yield from _streams(self._streams)

    def _sessions(self) -> Iterable[Metric]:
        g = self._gateway
        stats, session = g.stats, g.session_stats
        yield _gauge("oddstream_connections", "open client sessions", stats.connections)
        yield _counter("oddstream_connections_total", "sessions opened", stats.connections_total)
        yield _counter(
            "oddstream_slow_consumer_closes_total",
            "clients closed 4001 (outbox overflowed)",
            stats.slow_consumer_closes,
        )
        yield _counter(
            "oddstream_dead_client_closes_total",
            "clients dropped because a write stayed blocked past send_timeout_s",
            stats.dead_client_closes,
        )
        closes = CounterMetricFamily(
            "oddstream_closes_total", "connections the server closed, by why", labels=["reason"]
        )
        for reason, value in (
            ("slow", stats.slow_consumer_closes),
            ("dead", stats.dead_client_closes),
            ("unauthorised", session.unauthorised_closes),
            ("token_expired", session.token_expired_closes),
            ("rate_limited", session.rate_limit_closes),
        ):
            closes.add_metric([reason], value)
        yield closes
        resumes = CounterMetricFamily(
            "oddstream_resumes_total", "markets resumed, by outcome", labels=["outcome"]
        )
        resumes.add_metric(["exact"], session.resumes_exact)
        resumes.add_metric(["reset"], session.resumes_reset)
        yield resumes
        counts = dataclasses.asdict(session)
        for name in _SESSION_COUNTERS:
            yield _counter(f"oddstream_{name}_total", f"sessions: {name}", counts[name])
        refusals = CounterMetricFamily(
            "oddstream_auth_refusals_total", "credentials refused, by code", labels=["code"]
        )
        for code, n in g.auth.refusals.items():
            refusals.add_metric([code], n)
        yield refusals
        market, event, lobby = g.hub.subscription_counts()
        subs = GaugeMetricFamily(
            "oddstream_subscriptions", "subscriptions held, by kind", labels=["kind"]
        )
        for kind, value in (("market", market), ("event", event), ("lobby", lobby)):
            subs.add_metric([kind], value)
        yield subs
        yield _depths(len(s.outbox) for s in tuple(g.sessions))

    def _delivery(self) -> Iterable[Metric]:
        g = self._gateway
        yield _counter("oddstream_deliveries_total", "frames offered to clients", g.hub.delivered)
        yield _counter(
            "oddstream_heartbeats_total", "heartbeat frames offered to clients", g.stats.heartbeats
        )
        conflation = g.conflation
        yield _counter(
            "oddstream_conflations_total",
            "market and event frames folded into a queued one",
            conflation.merged + conflation.events_merged,
        )
        for name, value in msgspec.structs.asdict(conflation).items():
            yield _counter(f"oddstream_conflation_{name}_total", f"conflation: {name}", value)

    def _relay(self) -> Iterable[Metric]:
        relay = self._gateway.relay
        for name, value in msgspec.structs.asdict(relay.stats).items():
            yield _counter(f"oddstream_relay_{name}_total", f"relay: {name}", value)
        for name, size in relay.sizes().items():  # Bounded through a day (guarantees.md).
            yield _gauge(f"oddstream_relay_{name}", f"relay: {name} held", size)


def _depths(depths: Iterable[int]) -> GaugeHistogramMetricFamily:
    """The distribution of outbox depths over the connections, as of now."""
    counts = [0] * len(DEPTH_BUCKETS)
    total = n = 0
    for depth in depths:
        n += 1
        total += depth
        for i, bound in enumerate(DEPTH_BUCKETS):
            if depth <= bound:
                counts[i] += 1
                break
    buckets = []
    cumulative = 0
    for bound, count in zip(DEPTH_BUCKETS, counts, strict=True):
        cumulative += count
        buckets.append((str(float(bound)), float(cumulative)))
    buckets.append(("+Inf", float(n)))
    return GaugeHistogramMetricFamily(
        "oddstream_outbox_depth",
        "frames queued per connection, over every connection at scrape time",
        buckets=buckets,
        gsum_value=total,
    )


def _edge(admission: Admission) -> Iterable[Metric]:
    s = admission.settings
    yield _gauge("oddstream_edge_connections", "sockets the edge holds", admission.connections)
    for name, value in msgspec.structs.asdict(admission.stats).items():
        yield _counter(f"oddstream_edge_{name}_total", f"edge: {name}", value)
    limits = {
        "header_timeout_seconds": s.header_timeout_s,
        "idle_timeout_seconds": s.idle_timeout_s,
        "max_head_bytes": s.max_head_bytes,
        "max_body_bytes": s.max_body_bytes,
        "max_connections": admission.max_connections,
        "max_connections_per_ip": s.max_connections_per_ip,
    }
    for name, value in limits.items():
        yield _gauge(f"oddstream_limit_{name}", f"limit: {name}", value)


def _streams(streams: Streams) -> Iterable[Metric]:
    by_kind = {("ws", "json"): 0, ("ws", "msgpack"): 0, ("sse", "none"): 0}
    for conn in tuple(streams.connections):
        if conn.streaming:
            by_kind[conn.kind] = by_kind.get(conn.kind, 0) + 1
    family = GaugeMetricFamily(
        "oddstream_stream_connections",
        "open streaming connections by transport and subprotocol",
        labels=["transport", "subprotocol"],
    )
    for (transport, subprotocol), value in by_kind.items():
        family.add_metric([transport, subprotocol], value)
    yield family
