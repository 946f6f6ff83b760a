"""Markdown tables from a ``loadtest.bench --json`` report, for ``docs/performance.md``.

python -m loadtest.report bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loadtest import stages

PACKED = ("ceiling_packed", "oddstream_batched")


def figure(v: Any, spec: str = ",.0f") -> str:
    """A report's value as text: numbers formatted by ``spec``, ``-`` when absent."""
    if v is None:
        return "-"
    if isinstance(v, int | float):
        return format(v, spec)
    return str(v)


def _low(values: dict[str, Any], key: str, rate: int) -> Any:
    return values.get("latency_at", {}).get(str(rate), {}).get(key)


def machine(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"kernel {m['kernel']}; open-files hard limit {m['nofile_hard']}",
        f"- load average at start / end: {m['loadavg_start']} / {m.get('loadavg_end', '?')}",
        f"- Python {m['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items() if k not in {"git"} and val),
        f"- commit {v.get('git')}; command `{report['command']}`; "
        f"{report.get('elapsed_s', '?')} s; started {report['started']}",
    ]
    return "\n".join(lines)


def fanout_table(report: dict[str, Any]) -> str:
    rate = report["settings"]["latency_deliveries_per_s"]
    low = 5000
    head = (
        f"| scenario | system | clients | deltas/s | server CPU | clients CPU | "
        f"p50 / p99 ms @{rate // 1000}k/s | p50 / p99 ms @{low // 1000}k/s | "
        f"KiB/conn idle / load | x joining ceiling | oddstream x it | spread (n) |\n"
        f"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = [head]
    for name, s in report["scenarios"].items():
        systems = s.get("systems") or {}
        if not systems or name in {"slow_mix", "e2e", "books"}:
            continue
        ceiling = (systems.get("ceiling_joining") or {}).get("deltas_per_s")
        odd = (systems.get("oddstream") or {}).get("deltas_per_s")
        for system, v in systems.items():  # In the order they were measured.
            if v.get("available") is False:
                rows.append(
                    f"| {name} | {system} | - | not available: {v.get('reason', '')[:80]} "
                    "| | | | | | | | |"
                )
                continue
            if v.get("refused"):
                rows.append(
                    f"| {name} | {system} | {figure(v.get('connected'))} | "
                    f"not reported: {v['refused']} | | | | | | | | |"
                )
                continue
            delivered = v.get("deltas_per_s")
            packed = system in PACKED
            x_ceiling = delivered / ceiling if delivered and ceiling and not packed else None
            compared = odd and delivered and not system.startswith("oddstream") and not packed
            x_it = odd / delivered if compared else None
            rows.append(
                f"| {name} | {system} | {figure(v.get('connected'))} | "
                + (
                    f"{figure(v.get('delivered_per_s'))} frames ({figure(delivered)} deltas) | "
                    if packed
                    else f"{figure(delivered)} | "
                )
                + f"{figure(v.get('cpu_cores'), '.2f')} | "
                f"{figure(v.get('client_cpu_cores'), '.2f')} | "
                f"{figure(v.get('p50_ms'), '.1f')} / {figure(v.get('p99_ms'), '.1f')} | "
                f"{figure(_low(v, 'p50_ms', low), '.1f')} / "
                f"{figure(_low(v, 'p99_ms', low), '.1f')} | "
                f"{figure(v.get('rss_kib_per_conn'), '.1f')} / "
                f"{figure(v.get('rss_kib_per_conn_load'), '.1f')} | "
                f"{figure(x_ceiling, '.2f')} | {figure(x_it, '.2f')} | {_spread(v)} |"
            )
    return "\n".join(rows)


def _spread(values: dict[str, Any]) -> str:
    """Deltas/s over the repeats: min / median / max (n)."""
    s = (values.get("spread") or {}).get("deltas_per_s")
    if not s or s["n"] < 2:
        return "-"
    return f"{figure(s['min'])} / {figure(s['median'])} / {figure(s['max'])} ({s['n']})"


def _e2e_line(e2e: dict[str, Any]) -> str:
    m = e2e.get("gateway_metrics", {})
    return (
        f"- **e2e** (feed -> Kafka -> books -> Redis -> gateway -> {e2e['clients']} "
        f"clients, lobby/event page/bet slip mix): "
        f"feed {figure(e2e.get('feed_rate'), '.0f')} msg/s "
        f"({figure(e2e.get('deliveries_per_feed_message'), '.0f')} deliveries each) -> "
        f"{figure(e2e['delivered_per_s'])} deliveries/s; feed timestamp -> client p50 "
        f"{figure(e2e['p50_ms'], '.1f')} / p95 {figure(e2e.get('p95_ms'), '.1f')} / p99 "
        f"{figure(e2e['p99_ms'], '.1f')} / max {figure(e2e.get('max_ms'), '.1f')} ms; gateway CPU "
        f"{figure(e2e.get('gateway_cpu_cores'), '.2f')}, "
        f"books {figure(e2e.get('books_cpu_cores'), '.2f')}, "
        f"Redis {figure(e2e.get('redis_cpu_cores'), '.2f')}; "
        f"{figure(e2e['rss_kib_per_conn'], '.1f')} "
        f"KiB/conn; relay: {figure(m.get('oddstream_relay_received_total'))} received, "
        f"{figure(m.get('oddstream_relay_duplicates_total'))} duplicates, "
        f"{figure(m.get('oddstream_relay_gaps_total'))} gaps healed"
    )


def _e2e_stages(e2e: dict[str, Any]) -> str:
    """The e2e stage table (loadtest/stages.py), indented under the e2e line."""
    rows = e2e.get("stages")
    if not rows:
        return ""
    return "\n".join("  " + line for line in ["", *stages.lines(rows)])


def _books_line(books: dict[str, Any]) -> str:
    return (
        f"- **books**: {figure(books.get('messages'))} feed messages through one processor: "
        f"{figure(books.get('feed_per_s'))} messages/s "
        f"(CPU {figure(books.get('books_cpu_cores'), '.2f')} cores; "
        f"Redis {figure(books.get('redis_cpu_cores'), '.2f')})"
    )


def other_tables(report: dict[str, Any]) -> str:
    out = []
    slow = report["scenarios"].get("slow_mix")
    if slow:
        out.append(
            f"- **slow_mix** ({slow['clients']} clients, 10% reading 100 ms per second through a "
            f"4 KiB receive buffer, at {figure(slow.get('latency_offered_per_s'))} deliveries/s "
            f"= half the measured throughput): fast clients' p99 "
            f"{figure(slow.get('fast_p99_ms_without_slow'), '.1f')} ms without slow clients, "
            f"{figure(slow.get('fast_p99_ms_with_slow'), '.1f')} ms with them "
            f"(x{figure(slow.get('p99_ratio'), '.2f')}); slow clients' p99 "
            f"{figure(slow.get('slow_p99_ms'), '.1f')} ms; slow clients closed by the server: "
            f"{figure(slow.get('slow_closed_by_server'))}"
        )
    for name, line in (("e2e", _e2e_line), ("books", _books_line)):
        scenario = report["scenarios"].get(name)
        if scenario:
            out.append(
                line(scenario) + (_e2e_stages(scenario) if name == "e2e" else "")
                if scenario.get("measured")
                else f"- **{name}**: not measured ({scenario.get('note')})"
            )
    return "\n".join(out)


def goals(report: dict[str, Any]) -> str:
    rows = ["| goal | result | figures |", "|---|---|---|"]
    for g in report.get("goals", []):
        mark = {True: "**met**", False: "**not met**", None: "not measured"}[g["met"]]
        rows.append(f"| {g['goal']} | {mark} | {g['why']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m loadtest.report BENCH.json", file=sys.stderr)
        return 2
    report = json.loads(Path(args[0]).read_text())
    print(machine(report), end="\n\n")
    print(fanout_table(report), end="\n\n")
    print(other_tables(report), end="\n\n")
    print(goals(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
