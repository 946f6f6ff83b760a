"""The soak's fit: least-squares slope after the warm-up."""

from __future__ import annotations

import pytest

from loadtest.soak import slope


@pytest.mark.parametrize(
    ("samples", "warmup", "expected"),
    [
        ([(0, 5), (1, 7), (2, 9), (3, 11)], 0.0, 2.0),
        # Steep warm-up, then flat: only what follows the first 30% counts.
        ([(0, 0), (1, 100), (2, 100), (3, 100), (4, 100)], 0.3, 0.0),
        # Noise around a line: the fit finds its slope.
        ([(0, 10), (1, 13), (2, 13), (3, 17), (4, 17)], 0.0, 1.8),
        ([(2, 4), (4, 0)], 0.0, -2.0),
    ],
)
def test_slope(samples: list[tuple[float, float]], warmup: float, expected: float) -> None:
    assert slope(samples, warmup) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("samples", "warmup", "match"),
    [
        ([], 0.3, "no samples"),
        ([(0, 1), (10, 2)], 0.5, "fewer than two"),
        ([(1, 1), (1, 2)], 0.0, "same x"),
        ([(0, 1), (1, 2)], 1.0, "warmup"),
    ],
)
def test_slope_refuses_what_cannot_be_fitted(
    samples: list[tuple[float, float]], warmup: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        slope(samples, warmup)
