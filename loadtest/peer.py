"""The skeleton every server under test of the fan-out benchmark shares (the ceiling, the
websockets and broadcaster candidates, the Pushpin peer): its command line, and its
publisher run until the board or a signal says stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from loadtest.board import Board
from loadtest.client import raise_nofile
from loadtest.publisher import Publish, drive

#: Exit status of a peer that is not installed here (the benchmark reports it as such).
UNAVAILABLE = 3


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the helper servers a peer starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, deadline: float) -> bool:
    """Whether something listens on ``port`` before ``deadline`` (monotonic)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        await asyncio.sleep(0.1)  # Polling a child's start-up, bounded by the deadline.
    return False


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float = 10) -> None:
    """SIGTERM a server process the peer started; SIGKILL it after ``timeout_s``."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def announce_and_drive(
    name: str, pid: int, url: str, board: Board, publish: Publish, stop: asyncio.Event
) -> None:
    """For a peer that runs a server of its own: name the server's pid (the process the
    benchmark measures), say where it serves, then publish until told to stop; a
    publisher failure is printed (the benchmark then withholds the row)."""
    print(f"{name}: pid {pid}", flush=True)
    print(f"{name}: serving on {url}", flush=True)
    failed = await drive_until(board, publish, stop)
    if failed is not None:
        print(f"{name}: publisher failed: {failed!r}", flush=True)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (this process owns them)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def drive_until(board: Board, publish: Publish, stop: asyncio.Event) -> BaseException | None:
    """Publish as the board says until it says stop or ``stop`` is set; the publisher's
    error, if it failed."""
    feeder = asyncio.create_task(drive(board, publish))
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((feeder, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (feeder, waiter):
            task.cancel()
        await asyncio.gather(feeder, waiter, return_exceptions=True)
    return feeder.exception() if feeder.done() and not feeder.cancelled() else None


def main(
    name: str,
    argv: list[str] | None,
    serve: Callable[[Board, argparse.Namespace], Coroutine[Any, Any, int | None]],
    *,
    arguments: Callable[[argparse.ArgumentParser], object] | None = None,
    unavailable: Callable[[], str | None] | None = None,
) -> int:
    """A peer's command: ``--board``, ``--port``, ``--markets`` (and ``arguments``); exits
    :data:`UNAVAILABLE` when ``unavailable()`` gives a reason; else runs ``serve`` on
    uvloop with the file limit raised."""
    parser = argparse.ArgumentParser(description=f"the {name} server of loadtest.bench")
    parser.add_argument("--board", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--markets", type=int, default=10)
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    reason = unavailable() if unavailable is not None else None
    if reason is not None:
        print(f"{name}: not available ({reason})", flush=True)
        return UNAVAILABLE
    raise_nofile()
    board = Board.open(args.board)
    import uvloop

    return uvloop.run(serve(board, args)) or 0
