"""The fault table: one row per scenario (and transport), printed at the end of the run
and written to ``artifacts/faults.md``."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Sequence
from pathlib import Path

from tests.faults.checker import Verdict

ROWS: list[Verdict] = []
"""Rows recorded by the scenarios of this session, in run order."""

ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "faults.md"

_COLUMNS = (
    "scenario",
    "clients",
    "deltas",
    "resets",
    "gaps detected",
    "duplicates",
    "divergences",
    "undetected gaps",
    "dups applied",
    "reconnects",
    "topic gaps/dups/reused",
    "p99 live lag ms",
    "worst lag ms",
    "s",
    "result",
)


def record(verdict: Verdict) -> None:
    ROWS.append(verdict)


def _cells(v: Verdict) -> list[str]:
    return [
        v.scenario,
        str(v.clients),
        str(v.deltas),
        str(v.resets),
        str(v.gaps + v.epoch_breaks),
        str(v.duplicates),
        str(v.divergences + v.wrong_states),
        str(v.undetected_gaps),
        str(v.duplicates_applied),
        str(v.reconnects),
        "-" if v.topic is None else f"{v.topic.gaps}/{v.topic.duplicates}/{v.topic.reused}",
        str(v.p99_lag_ms),
        str(v.worst_lag_ms),
        f"{v.seconds:.0f}",
        "FAIL" if v.failures() else "pass",
    ]


def table(rows: Sequence[Verdict]) -> str:
    """A Markdown table (aligned, so it reads as well in a terminal)."""
    cells = [list(_COLUMNS), *(_cells(v) for v in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def notes(rows: Sequence[Verdict]) -> list[str]:
    out = []
    for v in rows:
        out += [f"{v.scenario}: {n}" for n in v.notes]
        out += [f"{v.scenario}: FAIL: {f}" for f in v.failures()]
    return out


LEGEND = """\
deltas: deltas applied by all clients; resets: snapshots that replaced a held book
(flagged reset, or outside a resume); gaps detected: deltas a client could not apply
(gap or foreign epoch: never applied, healed by the client, and a failure: the gateway
must heal them first); duplicates: deltas received again (never applied; a failure too);
divergences: client books != REST at the end, REST != the checker's reference model, and
client states on the way != the reference model's book at that seq;
undetected gaps: a client trusted a jump (unflagged snapshot after a resume, delta across
a hole); topic gaps/dups/reused: seqs missing, repeated and given out twice on the
`deltas` topic, per market and epoch (scenarios that read it; - elsewhere); lags:
now - feed timestamp of each delta applied (p99 live: the worst client's p99 over deltas
stamped after its connection opened; worst: any delta, including those replayed by a
resume after an outage)."""


def write(rows: Sequence[Verdict], path: Path = ARTIFACT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "# Fault suite",
        "",
        f"{stamp}, {platform.node()} ({platform.machine()}), tests/faults",
        "",
        table(rows),
        "",
        LEGEND,
        "",
        *(f"- {n}" for n in notes(rows)),
    ]
    path.write_text("\n".join(body).rstrip() + "\n")
    return path
