"""Helpers of the edge's security tests: raw sockets (the attacks do not go through a
well-behaved client), and a gateway running in a thread of its own with a neighbour
client whose books must stay exact whatever the fuzzers send (hypothesis drives plain
synchronous tests, so the server cannot share their event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import websockets
import websockets.sync.client
from hypothesis import HealthCheck, settings

import protocol
from tests.component.stack import Books, event, match_result, odds, running_stack
from tests.security import report
from tests.security.session_helpers import Measured, measure
from tests.security.wire import read_until_closed, status_of

M1 = "fb-1:1x2"
#: The wire fuzzers: an answer (or a close) within this, the server's own timeouts (the
#: ``server`` fixture's, 0.5 s and 1 s) plus slack for a shared machine.
DEADLINE_S = 3.0
#: Peak resident-memory growth of the whole process (gateway, neighbour and test alike)
#: allowed while one fuzzed input is answered.
FUZZ_RSS = 5 * 1024 * 1024
#: Bounded in time: tens of examples over the wire, each a few tens of ms (the neighbour
#: must receive a new delta, at the feed's 20 ms pace, after each); no per-example
#: deadline of hypothesis' own (the server's deadline is the one asserted).
#: The answers to an SSE request, and what their head or body holds
#: (docs/protocol.md#limits).
SSE_ANSWERS = {
    200: b"text/event-stream",
    400: b'"code":"invalid"',
    404: b'"code":"unknown_',
    431: b'"code":"too_large"',
}
WIRE_FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Neighbour:
    """A well-behaved WebSocket client of the threaded server: every message goes through
    ``protocol.apply`` (a gap or a doubled delta raises), its seqs are kept."""

    books: Books = field(default_factory=Books)
    errors: list[BaseException] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def take(self, message: protocol.ServerMessage) -> None:
        with self.changed:
            self.books.take(message)
            self.changed.notify_all()

    def seqs(self) -> list[int]:
        with self.changed:
            return list(self.books.seqs.get(M1, []))

    def wait_past(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait (from another thread) until the neighbour holds M1 past ``seq``."""
        with self.changed:
            return self.changed.wait_for(lambda: self.books.at(M1) > seq, timeout)


@dataclass
class ThreadedServer:
    port: int
    neighbour: Neighbour
    settings: dict[str, Any]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def answer(self, request: bytes) -> tuple[int, bytes]:
        """Send an HTTP request on a new connection: the answer's status and what came
        with its head (all of it when the server closes; an SSE stream stays open)."""
        with self.connect() as sock:
            # Refused mid-request (431): the answer is still there to read.
            with contextlib.suppress(OSError):
                sock.sendall(request)
            data, end = b"", time.monotonic() + DEADLINE_S
            while b"\r\n\r\n" not in data:
                left = end - time.monotonic()
                assert left > 0, f"no answer within {DEADLINE_S}s"
                sock.settimeout(left)
                chunk = sock.recv(65536)
                assert chunk, f"closed without an answer: {data[:200]!r}"
                data += chunk
            if status_of(data) != 200:
                rest, closed = read_until_closed(sock, DEADLINE_S)
                assert closed, "a refusal must close the connection"
                data += rest
        return status_of(data), data

    def command(self, frame: bytes | str) -> protocol.ServerMessage | int:
        """Send one WebSocket message (binary for bytes, text for str) on a new
        connection: the server's first answer, or its close code."""
        url = f"ws://127.0.0.1:{self.port}/ws"
        with websockets.sync.client.connect(url, open_timeout=DEADLINE_S) as conn:
            conn.send(frame)
            try:
                return protocol.decode_server(conn.recv(timeout=DEADLINE_S))
            except websockets.ConnectionClosed as closed:
                rcvd = closed.rcvd
        assert rcvd is not None, "closed without a close frame"
        return rcvd.code


async def _serve(
    ready: threading.Event, box: dict[str, Any], stop: asyncio.Event, **overrides: Any
) -> None:
    async with running_stack(**overrides) as stack:
        await stack.feed.send(event(), match_result())
        neighbour = Neighbour()

        async def feed() -> None:
            ts = 1_700_000_000_000
            while True:
                ts += 1
                await stack.feed.send(odds(M1, ts, home=f"{2 + (ts % 50) / 100:.2f}"))
                await asyncio.sleep(0.02)  # The feed's pace, by design.

        async def watch() -> None:
            try:
                async with websockets.connect(stack.ws_url) as conn:
                    await conn.send(msgspec.json.encode({"type": "subscribe", "markets": [M1]}))
                    while True:
                        neighbour.take(protocol.decode_server(await conn.recv()))
            except Exception as exc:  # Recorded: the test fails on it.
                neighbour.errors.append(exc)

        async with asyncio.TaskGroup() as tasks:
            feeding = tasks.create_task(feed())
            watching = tasks.create_task(watch())
            box["server"] = ThreadedServer(stack.node.port, neighbour, overrides)
            ready.set()
            await stop.wait()
            feeding.cancel()
            watching.cancel()


@contextlib.contextmanager
def threaded_server(**overrides: Any) -> Iterator[ThreadedServer]:
    """A gateway with a fed market and a neighbour client, in a thread of its own."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_serve(ready, box, stop, **overrides))
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="edge-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["server"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
        if "error" in box:
            raise box["error"]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with threaded_server(header_timeout_s=0.5, idle_timeout_s=1.0, max_body_bytes=1024) as srv:
        # The neighbour holds its book before any attack starts.
        assert srv.neighbour.wait_past(0), "the neighbour got no snapshot"
        yield srv


@contextlib.contextmanager
def guarded(srv: ThreadedServer, case: str) -> Iterator[Measured]:
    """One attack on ``srv`` (counted in the table's row ``case``): afterwards, the
    process's peak RSS grew by less than ``FUZZ_RSS`` and the neighbour's stream stayed
    contiguous and current."""
    since = srv.neighbour.seqs()[-1]
    with measure() as cost:
        yield cost
    expected = f"answers < {DEADLINE_S:g} s, RSS < {report.mib(FUZZ_RSS)}, neighbour contiguous"
    report.fuzzed(f"fuzz: {case}", expected, cost.seconds, cost.rss_growth_bytes)
    assert cost.rss_growth_bytes < FUZZ_RSS, f"RSS +{cost.rss_growth_bytes} bytes"
    assert_neighbour_healthy(srv, since)


def assert_neighbour_healthy(srv: ThreadedServer, since: int) -> None:
    """The neighbour got no error, keeps receiving, and its seqs are contiguous."""
    assert srv.neighbour.wait_past(since), "the neighbour stopped receiving"
    assert not srv.neighbour.errors, srv.neighbour.errors
    seqs = srv.neighbour.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a doubled delta"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = report.rows()
    if not rows:
        return
    terminalreporter.write_sep("=", "security suite")
    terminalreporter.write_line(report.table(rows))
    terminalreporter.write_line(f"(written to {report.write(rows)})")
