"""Match-day recordings for load tests: the synthetic match day, time-compressed N times
and anchored to the wall clock, so that ``oddstream feed replay REC --speed 1`` (or
``oddstream dev --feed jsonl:REC --speed 1``) plays a whole day in 1/N of the time and the
feed timestamps it carries are real time: lag measured from them is true lag (up to the
replayer's start-up offset, which :mod:`loadtest.locustfile` measures and removes).

The timeline (kick-offs, goals, full times) drives the locust traffic shape: users arrive
for kick-offs and flock in on goals.

    python -m loadtest.matchday write day.jsonl --speed 60 --events 8 --hours 3
    python -m loadtest.matchday timeline day.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from feeds.model import FeedEvent, FeedMessage, encode_feed
from feeds.replay import read_jsonl
from feeds.synthetic import MatchDay


@dataclass
class Timeline:
    """Moments of a recording, in ms after its first message."""

    duration_ms: int = 0
    first_ts: int = 0
    kickoffs: list[int] = field(default_factory=list)
    goals: list[int] = field(default_factory=list)
    full_times: list[int] = field(default_factory=list)
    messages: int = 0

    def live(self, at_ms: int) -> int:
        """Matches in play at ``at_ms``."""
        started = sum(1 for k in self.kickoffs if k <= at_ms)
        ended = sum(1 for f in self.full_times if f <= at_ms)
        return max(0, started - ended)

    def max_live(self) -> int:
        moments = sorted(self.kickoffs + self.full_times)
        return max((self.live(m) for m in moments), default=0)


def compressed(
    *, speed: float, events: int, hours: float, seed: int, anchor_ms: int
) -> Iterator[FeedMessage]:
    """The synthetic match day, ``hours`` of it, ``speed`` times faster, starting at
    ``anchor_ms`` (every ``ts`` and ``start_time`` rescaled)."""
    cut = int(hours * 3_600_000)
    for message in MatchDay(seed=seed, events=events, start_ms=0):
        if message.ts > cut:
            return
        ts = anchor_ms + int(message.ts / speed)
        if isinstance(message, FeedEvent):
            start = anchor_ms + int(message.start_time / speed)
            yield msgspec.structs.replace(message, ts=ts, start_time=start)
        else:
            yield msgspec.structs.replace(message, ts=ts)


def write(
    path: Path, *, speed: float, events: int, hours: float, seed: int = 3, anchor_ms: int
) -> Timeline:
    with path.open("wb") as out:
        for message in compressed(
            speed=speed, events=events, hours=hours, seed=seed, anchor_ms=anchor_ms
        ):
            out.write(encode_feed(message) + b"\n")
    return timeline(path)


def timeline(path: Path) -> Timeline:
    """Kick-offs (``pre`` -> ``live``), football goals (the score grows) and full times
    (-> ``ended``) of a recording."""
    tl = Timeline()
    last: dict[str, FeedEvent] = {}
    first: int | None = None
    for message in read_jsonl(path):
        if first is None:
            first = tl.first_ts = message.ts
        tl.messages += 1
        at = message.ts - first
        tl.duration_ms = max(tl.duration_ms, at)
        if not isinstance(message, FeedEvent):
            continue
        prev = last.get(message.event_id)
        if prev is not None:
            if prev.phase == "pre" and message.phase == "live":
                tl.kickoffs.append(at)
            if prev.phase != "ended" and message.phase == "ended":
                tl.full_times.append(at)
            if sum(message.score) > sum(prev.score) and message.sport == "football":
                tl.goals.append(at)
        last[message.event_id] = message
    return tl


def describe(tl: Timeline) -> str:
    def secs(values: list[int]) -> str:
        return ", ".join(f"{v / 1000:.0f}" for v in values) or "-"

    return (
        f"{tl.messages} messages over {tl.duration_ms / 1000:.0f} s; "
        f"kick-offs at {secs(tl.kickoffs)} s; goals at {secs(tl.goals)} s; "
        f"full times at {secs(tl.full_times)} s; at most {tl.max_live()} live at once"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.matchday")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a compressed, wall-clock anchored match day")
    w.add_argument("path", type=Path)
    w.add_argument("--speed", type=float, default=60.0, help="x real time")
    w.add_argument("--events", type=int, default=8, help="concurrent matches")
    w.add_argument("--hours", type=float, default=3.0, help="simulated hours")
    w.add_argument("--seed", type=int, default=3)
    w.add_argument(
        "--anchor-in-s",
        type=float,
        default=5.0,
        help="the first message's ts: this many seconds from now (when the replay starts)",
    )
    t = sub.add_parser("timeline", help="print a recording's kick-offs and goals")
    t.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        anchor = time.time_ns() // 1_000_000 + int(args.anchor_in_s * 1000)
        tl = write(
            args.path,
            speed=args.speed,
            events=args.events,
            hours=args.hours,
            seed=args.seed,
            anchor_ms=anchor,
        )
        print(f"wrote {args.path}: {describe(tl)}")
    else:
        print(describe(timeline(args.path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
