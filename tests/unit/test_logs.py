"""Log events: one JSON object per line with the fields of the contract, and repeats
held back and counted (``docs/observability.md#logs``)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from oddstream import logs


def record(
    msg: str, *args: object, level: int = logging.WARNING, **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord("feeds.books_runner", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_event_has_the_contract_fields_and_the_given_ones() -> None:
    line = logs.JsonFormatter("books").format(record("lag %d", 3, partition=2, market_id="m1"))
    event = json.loads(line)
    assert event.pop("ts").endswith("Z")
    assert event == {
        "level": "warning",
        "role": "books",
        "logger": "feeds.books_runner",
        "message": "lag 3",
        "partition": 2,
        "market_id": "m1",
    }


def test_json_event_inside_a_span_names_its_trace() -> None:
    tracer = TracerProvider().get_tracer(__name__)
    formatter = logs.JsonFormatter("books")
    with tracer.start_as_current_span("books.step") as span:
        inside = json.loads(formatter.format(record("step failed")))
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert "trace_id" not in json.loads(formatter.format(record("outside")))


def test_json_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        rec.exc_info = sys.exc_info()
    line = logs.JsonFormatter("gateway").format(rec)
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["exc"]


def test_text_names_the_fields_and_the_suppressed_count() -> None:
    line = logs.TextFormatter().format(record("lag", partition=2, suppressed=4))
    assert line.endswith("WARNING feeds.books_runner: lag partition=2 (4 repeats suppressed)")


def test_repeats_pass_once_per_interval_with_the_count_held_back() -> None:
    now = [0.0]
    repeats = logs.Repeats(interval_s=10, clock=lambda: now[0])
    passed = []
    for t in [0, 1, 2, 3, 9.9, 10, 11, 25]:
        now[0] = t
        rec = record("storage failed (%s)", f"attempt at {t}")
        if repeats.filter(rec):
            passed.append((t, rec.__dict__.get("suppressed")))
    assert passed == [(0, None), (10, 4), (25, 1)]


def test_repeats_tell_call_sites_and_levels_apart_and_spare_info() -> None:
    repeats = logs.Repeats(interval_s=10, clock=lambda: 0.0)
    assert repeats.filter(record("a"))
    assert repeats.filter(record("b"))
    assert repeats.filter(record("a", level=logging.ERROR))
    assert not repeats.filter(record("a"))
    assert all(repeats.filter(record("progress", level=logging.INFO)) for _ in range(3))


def test_repeats_remember_a_bounded_number_of_call_sites() -> None:
    repeats = logs.Repeats(interval_s=10, clock=lambda: 0.0)
    for i in range(logs.REPEAT_KEYS + 1):
        assert repeats.filter(record(f"site {i}"))
    assert len(repeats._seen) == logs.REPEAT_KEYS
    assert repeats.filter(record("site 0")), "the oldest was forgotten"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_routes_every_logger_to_one_handler(fmt: str) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        logs.setup("feed", "info", fmt, stream=out)
        logging.getLogger("feeds.kafka_feed").info("created topics", extra={"topic": "odds"})
        logging.getLogger("deep.library").debug("not at info")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        assert json.loads(lines[0])["topic"] == "odds"
    else:
        assert lines[0].endswith("INFO feeds.kafka_feed: created topics topic=odds")
