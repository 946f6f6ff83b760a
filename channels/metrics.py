"""The process's one Prometheus registry, the helpers that register on it, and the
metrics the pipeline shares (names, labels and units: ``docs/observability.md``).

A module declares its metrics once, at import time, in one line each::

    PRODUCED = counter("oddstream_feed_produced_total", "records queued to Kafka", ["topic"])

and binds label children once (``PRODUCED.labels(topic="odds")``), never on the hot path.
Counts the code already keeps as plain integers are better read at scrape time by a
collector (:func:`exposition` takes extra registries) than mirrored on every change.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import version as _package_version

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from channels.stamps import Stamps

__all__ = [
    "CONTENT_TYPE",
    "LATENCY",
    "REGISTRY",
    "STAGES",
    "FanoutClock",
    "Histogram",
    "RoleCollector",
    "counter",
    "exposition",
    "gauge",
    "histogram",
    "observe_arrival",
]

_VERSION = _package_version("oddstream")

# ``_created`` series double every counter and histogram for no use of ours.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
"""Every metric of this process (and the standard process, platform and GC ones)."""
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

#: The text format every Prometheus server reads (what :func:`exposition` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The bucket ladder of every latency histogram (seconds): fine below 10 ms, where the
#: pipeline's objectives are (p50 <= 2 ms, p99 <= 10 ms).
LATENCY = (
    0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """A counter on :data:`REGISTRY` (``name`` ends in ``_total``)."""
    return Counter(name, doc, labelnames=labels, registry=REGISTRY)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    return Gauge(name, doc, labelnames=labels, registry=REGISTRY)


class Histogram(Collector):
    """A histogram for the hot path: :meth:`observe` is one ``bisect`` and two additions
    (prometheus-client's takes a lock per bucket and scans them, ~4 us; this, ~0.3 us).
    Not thread-safe: observe from the event loop's thread only, as everything here does
    (a scrape from that thread reads a consistent enough view: counts only grow).

    With ``labels``, observe through a child bound once: ``h.labels(stage="kafka")``."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]):
        self._name = name
        self._doc = doc
        self._labels = tuple(labels)
        self._bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], Histogram] = {}
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def labels(self, **values: str) -> Histogram:
        key = tuple(values[label] for label in self._labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = Histogram(self._name, self._doc, (), self._bounds)
        return child

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        children = self._children.items() if self._labels else [((), self)]
        for key, child in children:
            buckets = []
            cumulative = 0
            for bound, count in zip((*child._bounds, math.inf), child._counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(key), buckets, child._sum)
        yield family


def histogram(
    name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY
) -> Histogram:
    """A :class:`Histogram` on :data:`REGISTRY`."""
    made = Histogram(name, doc, labels, buckets)
    REGISTRY.register(made)
    return made


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """``/metrics``: :data:`REGISTRY` and the ``extra`` collectors (per-object ones, such
    as a gateway's, of which a test process may hold several)."""
    text = generate_latest(REGISTRY)
    for collector in extra:
        own = CollectorRegistry(auto_describe=False)
        own.register(collector)
        text += generate_latest(own)
    return text


STAGE_NAMES = ("feed_send", "kafka", "books", "redis", "gateway", "pipeline")
_STAGE = histogram(
    "oddstream_stage_seconds",
    "time a delta spent in one stage of the pipeline (docs/observability.md)",
    ["stage"],
)
_SKEW = counter(
    "oddstream_stage_clock_skew_total",
    "stage stamps that went backwards (observed as 0)",
    ["stage"],
)


class _Stage:
    """One stage's histogram child and skew counter, bound once."""

    __slots__ = ("_hist", "_skew")

    def __init__(self, name: str):
        self._hist = _STAGE.labels(stage=name)
        self._skew = _SKEW.labels(stage=name)

    def observe_us(self, start_us: int, end_us: int) -> None:
        """Observe ``end_us - start_us`` (wall-clock microseconds of two processes)."""
        seconds = (end_us - start_us) / 1e6
        if seconds < 0:
            self._skew.inc()
            seconds = 0.0
        self._hist.observe(seconds)

    def observe(self, seconds: float) -> None:
        self._hist.observe(seconds)


class _Stages:
    __slots__ = STAGE_NAMES

    def __init__(self) -> None:
        for name in STAGE_NAMES:
            setattr(self, name, _Stage(name))

    feed_send: _Stage
    kafka: _Stage
    books: _Stage
    redis: _Stage
    gateway: _Stage
    pipeline: _Stage


STAGES = _Stages()
"""``oddstream_stage_seconds``, one bound child per stage: ``STAGES.kafka.observe_us(a, b)``."""


def observe_arrival(stamps: Stamps, received_us: int) -> None:
    """The gateway's stages of a stamped message received at ``received_us``: ``redis``
    and, when the feed timestamp is known, ``pipeline``."""
    STAGES.redis.observe_us(stamps.publish_us, received_us)
    if stamps.feed_us is not None:
        STAGES.pipeline.observe_us(stamps.feed_us, received_us)


_FANOUT = histogram(
    "oddstream_fanout_seconds",
    "one fan-out pass per message: gateway receive -> end of the flush pass that wrote it",
)
_CLIENT_QUEUE = histogram(
    "oddstream_client_queue_seconds",
    "per-client queueing delay, sampled: one connection write in 64, gateway receive of "
    "the oldest frame it wrote -> the write",
)


class FanoutClock:
    """The gateway's side of the stage stamps (see ``docs/observability.md``, "Inside the
    gateway"). The relay calls :meth:`arrived` for each stamped message it fans out to
    at least one local client; the node's flush pass calls :meth:`pass_started` and
    :meth:`pass_ended` around its writes, which observe the ``gateway`` stage and
    ``oddstream_fanout_seconds`` of every message since the previous pass; each
    connection write calls :meth:`wrote`. With ``enabled`` False (``--metrics off``) the
    relay records no arrivals and stamps no frames, so every method has nothing to do.

    ``clock`` is monotonic seconds (``time.monotonic``: asyncio's loop clock may be
    cached per loop turn, too coarse here)."""

    __slots__ = ("_arrivals", "_clock", "_limit", "_writes", "enabled")

    def __init__(self, clock: Callable[[], float], *, enabled: bool = True, limit: int = 4096):
        self._clock = clock
        self.enabled = enabled
        self._limit = limit
        self._arrivals: list[float] = []
        self._writes = 0

    def now(self) -> float:
        return self._clock()

    def arrived(self, received: float) -> None:
        """A message received at ``received`` (monotonic) was offered to clients."""
        if len(self._arrivals) < self._limit:
            self._arrivals.append(received)

    def pass_started(self) -> None:
        """The flush pass is about to write (its first write is the messages' first byte)."""
        arrivals = self._arrivals
        if arrivals:
            now = self._clock()
            observe = STAGES.gateway.observe
            for received in arrivals:
                observe(now - received)

    def pass_ended(self) -> None:
        arrivals = self._arrivals
        if arrivals:
            now = self._clock()
            observe = _FANOUT.observe
            for received in arrivals:
                observe(now - received)
            arrivals.clear()

    def wrote(self, received: float) -> None:
        """A connection wrote frames, the oldest received at ``received`` (0: unknown,
        e.g. a snapshot made by conflation). Observed for one write in 64."""
        if received:
            self._writes += 1
            if self._writes & 63 == 0:
                _CLIENT_QUEUE.observe(self._clock() - received)


class RoleCollector(Collector):
    """``oddstream_ready`` (1 while ``ready()``) and ``oddstream_info{role,version}``."""

    def __init__(self, role: str, ready: Callable[[], bool]):
        self._role = role
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "oddstream_ready", "1 while /readyz answers 200", value=1 if self._ready() else 0
        )
        info = GaugeMetricFamily("oddstream_info", "this process", labels=["role", "version"])
        info.add_metric([self._role, _VERSION], 1)
        yield info
