"""What the metrics cost: ``ws_5k`` delivered/s with the gateway's per-message
observations on and off (``--metrics``, here ``ODDSTREAM_METRICS``), in the same run.

The same harness, clients, payloads and window as ``loadtest.bench``'s ``ws_5k``
(:func:`loadtest.bench.measure`, throughput phase only); the two settings alternate
round by round (on, off, off, on, ...) so a drift of the machine does not favour one;
the ratio is of the medians. Every published delta carries the stage stamps' envelope
(``loadtest.gateway_driver``), so with metrics on the gateway observes its stages,
fan-out passes and sampled queueing delays as in production.

    python -m loadtest.overhead --rounds 3 [--clients 5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest import procs
from loadtest.bench import FULL, QUICK, measure

#: The ratio the observability issue asks for (metrics on / off).
GOAL = 0.95


def overhead(
    *, clients: int, rounds: int, quick: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Both settings, ``rounds`` times each, alternating; the figures and their ratio."""
    timing = QUICK if quick else FULL
    figures: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            run = measure(
                "oddstream",
                "ws",
                clients,
                timing,
                latency_rate=None,
                env={"ODDSTREAM_METRICS": mode},
                log=log,
            )
            delivered = run.values.get("delivered_per_s") if run.available else None
            connected = run.values.get("connected", 0)
            log(f"  round {i + 1}, metrics {mode}: {delivered} delivered/s, {connected} clients")
            if delivered is not None and connected >= 0.95 * clients:
                figures[mode].append(float(delivered))
    on = statistics.median(figures["on"]) if figures["on"] else None
    off = statistics.median(figures["off"]) if figures["off"] else None
    ratio = round(on / off, 3) if on is not None and off else None
    return {
        "name": "metrics_overhead",
        "scenario": "ws_5k",
        "clients": clients,
        "rounds": rounds,
        "delivered_per_s": figures,
        "median_on": on,
        "median_off": off,
        "ratio_on_to_off": ratio,
        "goal": GOAL,
        "met": None if ratio is None else ratio >= GOAL,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.overhead", description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 clients, short windows")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    procs.install_cleanup()
    from loadtest.client import raise_nofile

    raise_nofile()
    result = overhead(
        clients=200 if args.quick else args.clients, rounds=args.rounds, quick=args.quick
    )
    print(
        f"metrics on / off: {result['median_on']} / {result['median_off']} delivered/s "
        f"(medians of {args.rounds}): ratio {result['ratio_on_to_off']} (goal >= {GOAL})",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ratio_on_to_off"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
