"""The arithmetic of the e2e stage table (loadtest/stages.py): parsing the processes'
histograms, the window's difference, and percentiles interpolated inside a bucket."""

from __future__ import annotations

import math

import pytest

from loadtest import stages

TEXT = """\
# TYPE oddstream_stage_seconds histogram
oddstream_stage_seconds_bucket{le="0.001",stage="kafka"} 2.0
oddstream_stage_seconds_bucket{le="0.002",stage="kafka"} 6.0
oddstream_stage_seconds_bucket{le="+Inf",stage="kafka"} 8.0
oddstream_stage_seconds_count{stage="kafka"} 8.0
oddstream_stage_seconds_sum{stage="kafka"} 0.02
# TYPE oddstream_fanout_seconds histogram
oddstream_fanout_seconds_bucket{le="0.01"} 4.0
oddstream_fanout_seconds_bucket{le="+Inf"} 4.0
oddstream_fanout_seconds_count 4.0
oddstream_fanout_seconds_sum 0.01
# TYPE oddstream_step_seconds histogram
oddstream_step_seconds_bucket{le="+Inf"} 9.0
"""


def test_parse_keeps_the_stage_families_only() -> None:
    parsed = stages.parse(TEXT)
    assert parsed == {
        ("oddstream_stage_seconds", "kafka"): [(0.001, 2.0), (0.002, 6.0), (math.inf, 8.0)],
        ("oddstream_fanout_seconds", None): [(0.01, 4.0), (math.inf, 4.0)],
    }


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.001),  # Rank 2: the top of the first bucket.
        (0.125, 0.0005),  # Rank 1: halfway through the first bucket, from 0.
        (0.5, 0.0015),  # Rank 4: halfway through (0.001, 0.002].
        (0.99, 0.002),  # In +Inf: its lower bound, a floor.
    ],
)
def test_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    series = [(0.001, 2.0), (0.002, 6.0), (math.inf, 8.0)]
    assert stages.quantile(series, q) == pytest.approx(expected)


def test_quantile_skips_empty_buckets_and_is_none_without_samples() -> None:
    assert stages.quantile([(0.001, 0.0), (0.002, 0.0), (math.inf, 0.0)], 0.5) is None
    assert stages.quantile([], 0.5) is None
    # Nothing below 0.002: the median is inside (0.002, 0.004], not at an empty bound.
    series = [(0.001, 0.0), (0.002, 0.0), (0.004, 2.0), (math.inf, 2.0)]
    assert stages.quantile(series, 0.5) == pytest.approx(0.003)


def test_the_window_is_the_difference_of_two_scrapes_summed_over_processes() -> None:
    key = ("oddstream_stage_seconds", "kafka")
    before = {key: [(0.001, 2.0), (math.inf, 3.0)]}
    books = [(0.001, 5.0), (math.inf, 9.0)]
    other = [(0.001, 1.0), (math.inf, 1.0)]
    after = {key: stages.add(books, other)}
    assert stages.diff(after, before) == {key: [(0.001, 4.0), (math.inf, 7.0)]}


def test_table_in_milliseconds_with_empty_rows() -> None:
    rows = stages.table(stages.parse(TEXT))
    assert rows["kafka"] == {"samples": 8.0, "p50_ms": 1.5, "p99_ms": 2.0}
    assert rows["fanout"] == {"samples": 4.0, "p50_ms": 5.0, "p99_ms": 9.9}
    assert rows["redis"] == {"samples": 0.0, "p50_ms": None, "p99_ms": None}
    text = stages.lines(rows)
    assert text[0] == "| stage | samples | p50 ms | p99 ms |"
    assert "| kafka | 8 | 1.50 | 2.00 |" in text
    assert "| redis | 0 | - | - |" in text
