"""How every process role logs: one event per line on stderr, JSON (for a log collector)
or text (for a person at a terminal), with repeats rate-limited. Set up once, by
:func:`setup`, before a role starts (``docs/observability.md#logs``).

A JSON event is one object per line::

    {"ts": "2026-12-02T10:00:00.123Z", "level": "warning", "role": "books",
     "logger": "feeds.books_runner", "message": "storage failed ...", "partition": 3}

``ts``, ``level``, ``role``, ``logger`` and ``message`` are always there; the fields of
:data:`FIELDS` when the call passed them (``log.warning(..., extra={"partition": 3})``);
``trace_id`` also when the event is logged inside a sampled span (a books step, a fan-out
pass: ``docs/observability.md#traces-opentelemetry``); ``suppressed`` when repeats of the
same call were held back (:class:`Repeats`); ``exc`` with the traceback of
``log.exception``.

Standard output is not a log: it carries the few lines a launcher reads (``serving on
URL``, ``books in group G``, ``operator endpoints on URL``, a feed's ``produced N``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

#: Fields a log call may add with ``extra=``; nothing else of a record is written (no
#: market id becomes a metric label, but a log event may name one).
FIELDS = ("partition", "topic", "market_id", "event_id", "conn", "trace_id")

#: A repeated message (the same call site and level) is written at most once per this
#: many seconds; the next one written says how many were held back.
REPEAT_S = 10.0

#: Distinct call sites :class:`Repeats` remembers; the oldest is forgotten past it.
REPEAT_KEYS = 1024

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Repeats(logging.Filter):
    """Holds back repeats of a message: the first record of a call site (logger, level,
    unformatted message) in each ``interval_s`` passes, the others are counted, and the
    next one that passes carries ``suppressed`` (their count). Records below WARNING are
    not limited (progress lines are periodic already; debug is off in production)."""

    def __init__(
        self, interval_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], tuple[float, int]] = OrderedDict()
        # A handler runs its filters outside its own lock (threads log too: to_thread).
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            return self._first(record)

    def _first(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.suppressed = last[1]
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        if len(self._seen) > REPEAT_KEYS:
            self._seen.popitem(last=False)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, escaped)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": f"{datetime.fromtimestamp(record.created, UTC):%Y-%m-%dT%H:%M:%S}."
            f"{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*FIELDS, "suppressed"):
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if "trace_id" not in event:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                event["trace_id"] = format(span.trace_id, "032x")
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, the fields of :data:`FIELDS` given as
    ``name=value`` after it, and the count of held-back repeats."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [f"{n}={record.__dict__[n]}" for n in FIELDS if record.__dict__.get(n) is not None]
        suppressed = record.__dict__.get("suppressed")
        if suppressed:
            fields.append(f"({suppressed} repeats suppressed)")
        return " ".join([line, *fields])


def setup(role: str, level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger of the process to one handler on ``stream`` (stderr): ``fmt``
    ``json`` or ``text``, at ``level``, with repeats rate-limited. Replaces any handler
    set before (a role sets up once, at start-up)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(role) if fmt == "json" else TextFormatter())
    handler.addFilter(Repeats())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
