"""The replay scenario: a recording through reader, adapter, processor and store in one
process, as fast as it goes (``oddstream dev --feed FORMAT:PATH --speed 0`` without the
gateway).

    python -m loadtest.replay_bench                       # the in-repo recordings
    python -m loadtest.replay_bench betfair:PATH uof:DIR  # any recordings

Per recording: records read (lines of the file: Betfair's stream records, heartbeats
included; UOF messages), feed messages they became, the wall time from opening the file
to the last step stored, records/s, and records per CPU second of the process (the
figure to compare on a shared, busy machine). The best of ``repeat`` runs is kept. The
embedded pipeline is the one ``oddstream dev`` runs (in-memory bus, :class:`Processor`,
:class:`MemoryStore`, :class:`MemoryBroker`), with the staleness guard off: a replay at
full speed is never silent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from channels.broker import MemoryBroker
from channels.store import MemoryStore
from feeds.embedded import EmbeddedPipeline
from feeds.replay import ReadReport, paced
from feeds.sources import READERS

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "feeds"

#: What the scenario replays by default: the largest Betfair recording (the goal's
#: subject), the compressed one and the UOF messages.
RECORDINGS = (
    f"betfair:{DATA / 'betfair' / 'flumine_SELF-1.181223995_horse_place_inplay.jsonl'}",
    f"betfair:{DATA / 'betfair' / 'nautilus_1-206064380_horse_win_au.jsonl.bz2'}",
    f"uof:{DATA / 'uof'}",
)

#: The goal for the largest recording, records per second.
GOAL_RECORDS_S = 100_000


async def _replay(spec: str) -> dict[str, Any]:
    kind, _, raw = spec.partition(":")
    report = ReadReport()
    started, cpu_started = time.perf_counter(), time.process_time()
    pipeline = EmbeddedPipeline(
        paced(READERS[kind](Path(raw), report), 0),
        MemoryStore(),
        MemoryBroker(),
        stale_after_s=None,
    )
    await pipeline.run()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    records = report.read + len(report.skipped)
    return {
        "recording": Path(raw).name,
        "records": records,
        "messages": pipeline.processed,
        "dead_letters": pipeline.dead_letters,
        "seconds": round(elapsed, 3),
        "records_s": round(records / elapsed) if elapsed > 0 else None,
        "cpu_seconds": round(cpu, 3),
        "records_cpu_s": round(records / cpu) if cpu > 0 else None,
    }


def replay_scenario(
    *, quick: bool, log: Callable[[str], None], recordings: Sequence[str] = RECORDINGS
) -> dict[str, Any]:
    """Each recording replayed ``1`` (quick) or ``3`` times; the best run of each."""
    repeat = 1 if quick else 3
    log(f"\n== replay: {len(recordings)} recordings, best of {repeat} ==")
    results = []
    for spec in recordings:
        runs = [asyncio.run(_replay(spec)) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        log(
            f"  {best['recording']}: {best['records']:,} records -> {best['messages']:,} "
            f"messages in {best['seconds']:.3f} s = {best['records_s']:,} records/s "
            f"({best['records_cpu_s']:,} per CPU second)"
        )
        results.append(best)
    largest = max(results, key=lambda r: r["records"])
    return {
        "measured": True,
        "recordings": results,
        "largest_records_s": largest["records_s"],
        "goal_records_s": GOAL_RECORDS_S,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings", nargs="*", help="FORMAT:PATH (default: the in-repo ones)")
    parser.add_argument("--quick", action="store_true", help="one run per recording")
    args = parser.parse_args(argv)
    replay_scenario(quick=args.quick, log=print, recordings=args.recordings or RECORDINGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
