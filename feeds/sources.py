"""Feed sources by name, for ``oddstream dev --feed`` and ``oddstream feed``.

``synth`` is the synthetic match day, paced at ``rate`` messages per second and stamped
with the wall clock. ``FORMAT:PATH`` replays a recording in its own time order at ``speed``
times its pace (0: as fast as possible), keeping its own timestamps. Formats: ``jsonl``
(our own feed messages), ``betfair`` (Exchange Stream API market changes, JSON lines,
optionally ``.bz2``) and ``uof`` (Sportradar UOF XML: one message, or a directory of them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from feeds.betfair import read_betfair
from feeds.embedded import now_ms, rated
from feeds.model import FeedMessage
from feeds.replay import ReadReport, paced, read_jsonl
from feeds.uof import read_uof

Reader = Callable[[Path, ReadReport], Iterator[FeedMessage]]

#: Recording formats by name; adapters for other sources register here.
READERS: dict[str, Reader] = {"jsonl": read_jsonl, "betfair": read_betfair, "uof": read_uof}

#: Formats whose PATH may be a directory (read in file-name order).
DIRECTORY_FORMATS: frozenset[str] = frozenset({"uof"})


class SourceError(ValueError):
    """The feed spec names no known source, or its file is missing."""


def check_spec(spec: str) -> None:
    """Validate a ``--feed`` value without opening anything."""
    if spec == "synth":
        return
    kind, sep, path = spec.partition(":")
    if not sep or kind not in READERS or not path:
        known = ", ".join(["synth", *(f"{k}:PATH" for k in READERS)])
        raise SourceError(f"unknown feed {spec!r}; expected one of {known}")


def open_source(
    spec: str,
    *,
    seed: int,
    events: int,
    rate: float,
    speed: float,
    report: ReadReport | None = None,
) -> AsyncIterator[FeedMessage]:
    """The paced feed a spec names. Raises :class:`SourceError`."""
    check_spec(spec)
    if spec == "synth":
        from feeds.synthetic import MatchDay

        return rated(MatchDay(seed=seed, events=events, start_ms=now_ms()), rate)
    kind, _, raw_path = spec.partition(":")
    path = Path(raw_path)
    if not (path.is_file() or (kind in DIRECTORY_FORMATS and path.is_dir())):
        raise SourceError(f"feed recording not found: {path}")
    return paced(READERS[kind](path, report if report is not None else ReadReport()), speed)
