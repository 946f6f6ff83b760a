"""The e2e scenario's stage table: where a delta's time goes between the feed and the
client, read from the processes' own ``/metrics`` (``docs/observability.md``).

Each process observes its stages into Prometheus histograms: books ``feed_send``,
``kafka``, ``books`` (once per step); the gateway ``redis``, ``pipeline`` (per message)
and ``gateway``, ``oddstream_fanout_seconds`` (per flush pass). The harness scrapes them
before and after the measuring window and takes the difference, so only that window
counts; percentiles are interpolated inside the bucket that holds them, as Prometheus'
``histogram_quantile`` does (the buckets are fine below 10 ms).
"""

from __future__ import annotations

import contextlib
import math
import urllib.request
from collections.abc import Iterable, Mapping, Sequence

#: (row, metric family, stage label or None), in the order a delta meets them.
ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("feed_send", "oddstream_stage_seconds", "feed_send"),
    ("kafka", "oddstream_stage_seconds", "kafka"),
    ("books", "oddstream_stage_seconds", "books"),
    ("redis", "oddstream_stage_seconds", "redis"),
    ("pipeline", "oddstream_stage_seconds", "pipeline"),
    ("gateway", "oddstream_stage_seconds", "gateway"),
    ("fanout", "oddstream_fanout_seconds", None),
)

#: (family, stage) -> ascending [(upper bound, cumulative count)].
Buckets = dict[tuple[str, str | None], list[tuple[float, float]]]


def parse(text: str) -> Buckets:
    """The ``_bucket`` samples of the families in :data:`ROWS`, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {(family, stage) for _, family, stage in ROWS}
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            key = (family.name, sample.labels.get("stage"))
            if key in wanted:
                out.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    for series in out.values():
        series.sort()
    return out


def scrape(urls: Iterable[str], timeout_s: float = 10) -> Buckets:
    """The buckets of every process at ``urls`` (``/metrics``), added together (each
    stage is observed by one process; one unreachable counts as empty)."""
    total: Buckets = {}
    for url in urls:
        text = ""
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=timeout_s) as response,  # noqa: S310 - loopback
        ):
            text = response.read().decode()
        for key, series in parse(text).items():
            total[key] = add(total.get(key, []), series)
    return total


Series = Sequence[tuple[float, float]]


def add(a: Series, b: Series) -> list[tuple[float, float]]:
    if not a:
        return list(b)
    return [(bound, n + m) for (bound, n), (_, m) in zip(a, b, strict=True)]


def diff(after: Buckets, before: Buckets) -> Buckets:
    """What was observed between two scrapes."""
    out: Buckets = {}
    for key, series in after.items():
        earlier = dict(before.get(key, []))
        out[key] = [(bound, n - earlier.get(bound, 0.0)) for bound, n in series]
    return out


def quantile(series: Series, q: float) -> float | None:
    """The ``q`` quantile (0..1) of cumulative ``series``, in seconds, interpolated
    linearly inside its bucket (from 0 in the first); None when nothing was observed.
    In the ``+Inf`` bucket it is that bucket's lower bound (a floor)."""
    if not series or series[-1][1] <= 0:
        return None
    rank = q * series[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in series:
        if cumulative >= rank and cumulative > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def table(buckets: Buckets) -> dict[str, dict[str, float | None]]:
    """Per row of :data:`ROWS`: samples, p50 and p99 (milliseconds)."""
    rows: dict[str, dict[str, float | None]] = {}
    for row, family, stage in ROWS:
        series = buckets.get((family, stage), [])
        count = series[-1][1] if series else 0.0
        p50, p99 = quantile(series, 0.5), quantile(series, 0.99)
        rows[row] = {
            "samples": count,
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }
    return rows


def lines(rows: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """The table as text (markdown), one row per stage."""
    out = ["| stage | samples | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for row, figures in rows.items():
        p50, p99 = figures["p50_ms"], figures["p99_ms"]
        out.append(
            f"| {row} | {figures['samples']:,.0f} | {'-' if p50 is None else f'{p50:.2f}'} "
            f"| {'-' if p99 is None else f'{p99:.2f}'} |"
        )
    return out
