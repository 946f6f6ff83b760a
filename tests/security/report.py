"""The security table: one row per "done when" figure of issue 12 (case, expected,
observed), printed at the end of the run and written to ``artifacts/security.md``, so
a closing note can paste what the suite measured rather than what it was meant to."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "security.md"


class Row(NamedTuple):
    case: str
    expected: str
    observed: str


ROWS: list[Row] = []
"""Rows recorded by the tests of this session, in run order."""


_FUZZED: dict[tuple[str, str], tuple[int, float, int]] = {}
"""Per fuzzer (case, expected): examples run, worst seconds, worst RSS growth."""


def record(case: str, expected: str, observed: str) -> None:
    """Record a figure; call it before the test's assertions, so a failure shows too."""
    ROWS.append(Row(case, expected, observed))


def fuzzed(case: str, expected: str, seconds: float, rss_growth_bytes: int) -> None:
    """Count one fuzzed input of ``case``: its row holds the worst figures of all."""
    n, worst_s, worst_rss = _FUZZED.get((case, expected), (0, 0.0, 0))
    _FUZZED[case, expected] = (n + 1, max(worst_s, seconds), max(worst_rss, rss_growth_bytes))


def rows() -> list[Row]:
    """The recorded rows, then one per fuzzer."""
    return ROWS + [
        Row(case, expected, f"{n} inputs, worst {ms(s)}, RSS +{mib(rss)}")
        for (case, expected), (n, s, rss) in _FUZZED.items()
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table (aligned, so it reads as well in a terminal)."""
    cells = [list(Row._fields), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(Row._fields))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(row) for row in cells[1:]])


def write(rows: Sequence[Row], path: Path = ARTIFACT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = f"{stamp}, {platform.node()} ({platform.machine()}), tests/security"
    path.write_text(f"# Security suite\n\n{head}\n\n{table(rows)}\n")
    return path
