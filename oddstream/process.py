"""What every process role shares: its event loop, how it fails at start-up, and how a
consumer role stops on a signal and reports its progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("oddstream")

#: Seconds between two progress lines in the log.
REPORT_S = 5.0


class Failed(Exception):
    """A role cannot run; ``message`` says why, naming the setting at fault, and the
    command exits with ``status`` (2: a wrong setting, 1: a service unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run a role's ``main`` on uvloop where there is one; the exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(main)
    else:
        uvloop.run(main)
    return 0


@contextlib.asynccontextmanager
async def stoppable(
    role: str, stop: Callable[[], Awaitable[None] | None], progress: Callable[[], str]
) -> AsyncIterator[None]:
    """While inside: SIGTERM and SIGINT call ``stop`` (a coroutine it returns runs as a
    task, awaited on the way out), and every :data:`REPORT_S` seconds the log gets
    ``<role>: <progress()>``; the last line when the block ends."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def on_signal() -> None:
        outcome = stop()
        if outcome is not None:
            stopping.append(asyncio.ensure_future(outcome))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_S)  # Progress cadence, not synchronisation.
            log.info("%s: %s", role, progress())

    reporter = loop.create_task(report())
    try:
        yield
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, *stopping, return_exceptions=True)
        log.info("%s: stopped: %s", role, progress())
