"""Helpers of the edge's security tests: raw sockets (the attacks do not go through a
well-behaved client), and a gateway running in a thread of its own with a neighbour
client whose books must stay exact whatever the fuzzers send (hypothesis drives plain
synchronous tests, so the server cannot share their event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import websockets

import protocol
from tests.component.stack import Books, event, match_result, odds, running_stack
from tests.security import report

M1 = "fb-1:1x2"


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


def assert_neighbour_healthy(srv: ThreadedServer, since: int) -> None:
    """The neighbour got no error, keeps receiving, and its seqs are contiguous."""
    assert srv.neighbour.wait_past(since), "the neighbour stopped receiving"
    assert not srv.neighbour.errors, srv.neighbour.errors
    seqs = srv.neighbour.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a doubled delta"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not report.ROWS:
        return
    terminalreporter.write_sep("=", "security suite")
    terminalreporter.write_line(report.table(report.ROWS))
    terminalreporter.write_line(f"(written to {report.write(report.ROWS)})")
