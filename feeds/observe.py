"""A book processor's metrics and stage stamps (``docs/observability.md``).

:class:`StepObserver` is what :class:`~feeds.books_runner.BooksRunner` calls, once per
step (never per record): it reads the stamps of a step's first record (the oldest: the
merge releases records in send order), observes the ``feed_send`` and ``kafka`` stages,
the step's size and duration, and makes the pub/sub envelope when the step is stored.
:class:`BooksCollector` reads the runner's counts when ``/metrics`` is scraped.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from opentelemetry.trace import Span
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from channels import traces
from channels.metrics import STAGES, counter, gauge, histogram
from channels.stamps import (
    STAMP_HEADER,
    TRACE_HEADER,
    envelope,
    now_us,
    read_feed_stamp,
    wrap,
)
from feeds.book import RejectReason
from feeds.processor import DeadLetter, FeedRecord, Step

_STEP_SIZE = histogram(
    "oddstream_step_size",
    "records applied per step",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
_STEP_SECONDS = histogram("oddstream_step_seconds", "applying a step to the books (CPU, no I/O)")
_REDIS_WRITE = histogram(
    "oddstream_redis_write_seconds", "a step's store-and-publish, sent -> acknowledged by Redis"
)
_LAST_FEED = gauge(
    "oddstream_last_feed_message_timestamp_seconds",
    "feed timestamp of the newest record applied (Unix seconds)",
)
_DEAD = counter(
    "oddstream_dead_letters_total", "feed records sent to the dead-letter topic", ["reason"]
)
#: The bounded label values of ``oddstream_dead_letters_total``.
DEAD_LETTER_REASONS = ("malformed", *typing.get_args(RejectReason))
_DEAD_BY_REASON = {reason: _DEAD.labels(reason=reason) for reason in DEAD_LETTER_REASONS}


class StepStamp(NamedTuple):
    """What a step's envelopes need: the books receive ``t2`` of its first record
    (wall-clock microseconds) and, per record, its feed timestamp ``t0`` as the decimal
    digits of its stamp header (``b""`` when unknown)."""

    received_us: int
    feeds: list[bytes]


def record_stamp(record: FeedRecord) -> tuple[int | None, int] | None:
    """``(t0, t1)`` of a record's stamp header; None without one (or unreadable)."""
    for name, value in record.headers:
        if name == STAMP_HEADER:
            return read_feed_stamp(value)
    return None


def _feed_digits(record: FeedRecord) -> bytes:
    """A record's ``t0`` as its stamp header spells it, if it is only digits (it goes
    into the envelope as it is: nothing a producer wrote may break that line)."""
    for name, value in record.headers:
        if name == STAMP_HEADER:
            digits = value.partition(b" ")[0]
            return digits if digits.isdigit() else b""
    return b""


class Stamped(NamedTuple):
    """What a step's I/O carries for observation: its stamps and its span."""

    stamp: StepStamp | None
    span: Span | None


NOT_STAMPED = Stamped(None, None)


class StepObserver:
    """The per-step observations of one book processor; ``enabled`` False
    (``--metrics off``) observes nothing and stamps only the publish time."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def applied(self, records: Sequence[FeedRecord], seconds: float) -> StepStamp | None:
        """A step of ``records`` was applied in ``seconds``: observe it (the stages of its
        first record); returns what its envelopes carry (None when not observing). The
        newest feed timestamp is kept either way (the feed-stale alert reads it)."""
        if not records:
            return None
        newest = _feed_digits(records[-1])
        if newest:
            _LAST_FEED.set(int(newest) / 1e6)
        if not self.enabled:
            return None
        _STEP_SIZE.observe(len(records))
        _STEP_SECONDS.observe(seconds)
        first = records[0]
        stamp = record_stamp(first)
        if stamp is not None:
            feed_us, sent_us = stamp
            if feed_us is not None:
                STAGES.feed_send.observe_us(feed_us, sent_us)
            STAGES.kafka.observe_us(sent_us, first.received_us)
        return StepStamp(first.received_us, [_feed_digits(r) for r in records])

    def publications(
        self, step: Step, stamp: StepStamp | None, span: Span | None = None
    ) -> list[tuple[tuple[str, ...], bytes]]:
        """The step's publications, each behind the envelope of its own record (``t0``)
        and of the step (``t3``: now, as they are sent; the ``traceparent`` of its
        ``span``), and observe the ``books`` stage. A step made otherwise (a rebase, a
        staleness tick) carries ``t3`` only."""
        publish_us = now_us()
        trace = None if span is None else traces.traceparent(span)
        publications = step.publications
        starts = step.starts
        if stamp is None or len(starts) != len(stamp.feeds):
            return wrap(publications, envelope(None, publish_us, trace))
        if stamp.received_us:
            STAGES.books.observe_us(stamp.received_us, publish_us)
        out: list[tuple[tuple[str, ...], bytes]] = []
        ends = [*starts[1:], len(publications)]
        for begin, end, feed in zip(starts, ends, stamp.feeds, strict=True):
            if begin < end:
                head = envelope(feed or None, publish_us, trace)
                out += [(channels, head + payload) for channels, payload in publications[begin:end]]
        return out

    @staticmethod
    def step_span(records: Sequence[FeedRecord]) -> Span | None:
        """The ``books.step`` span of a step when tracing is on and a record of it carries
        a sampled context: the first one's child, linked to the others'."""
        tracer = traces.state.tracer
        if tracer is None:
            return None
        parents = [v for r in records for name, v in r.headers if name == TRACE_HEADER]
        context = traces.parent(parents[0]) if parents else None
        if context is None:
            return None
        return tracer.start_span(
            "books.step",
            context=context,
            kind=traces.SpanKind.CONSUMER,
            links=traces.link(parents[1:]),
            attributes={"oddstream.step.records": len(records)},
        )

    def stored(self, seconds: float) -> None:
        """A step's store-and-publish was acknowledged ``seconds`` after it was sent."""
        if self.enabled:
            _REDIS_WRITE.observe(seconds)

    @staticmethod
    def dead_letter(dead: DeadLetter) -> None:
        reason = dead.reason.partition(":")[0]
        child = _DEAD_BY_REASON.get(reason)
        if child is not None:
            child.inc()


class _Runner(Protocol):
    """What :class:`BooksCollector` reads of a runner."""

    @property
    def counts(self) -> Mapping[str, int]: ...

    def lag(self) -> Mapping[int, int]: ...


class BooksCollector(Collector):
    """A book processor's counts, gauges and consumer lag, as of the scrape."""

    def __init__(self, runner: _Runner):
        self._runner = runner

    def collect(self) -> Iterable[Metric]:
        runner = self._runner
        counts = runner.counts
        yield GaugeMetricFamily(
            "oddstream_markets_held",
            "markets whose books this process holds in memory",
            value=counts["markets_held"],
        )
        for name, doc in (
            ("records", "feed records applied or dead-lettered"),
            ("steps", "steps done"),
            ("rebalances", "partition assignments"),
            ("store_retries", "store/publish attempts retried"),
        ):
            yield CounterMetricFamily(f"oddstream_books_{name}_total", doc, value=counts[name])
        lag = GaugeMetricFamily(
            "oddstream_kafka_lag",
            "records not yet applied (high watermark - next offset), per partition number",
            labels=["partition"],
        )
        for partition, records in sorted(runner.lag().items()):
            lag.add_metric([str(partition)], records)
        yield lag
