"""Real oddstream processes for the distributed tests: started with the CLI, their output
read line by line, stopped (or killed) at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """One ``oddstream`` process; ``lines`` keeps everything it printed."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process):
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._line_added = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._line_added.set()
        self._line_added.set()

    async def wait_line(self, needle: str, timeout: float = 60) -> str:
        """The first output line containing ``needle``."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"{self.name} exited: {self.output()}")
                self._line_added.clear()
                await self._line_added.wait()

    async def next_line(self, timeout: float = 60) -> None:
        """Wait until the process prints one more line, or exits."""
        count = len(self.lines)
        async with asyncio.timeout(timeout):
            while len(self.lines) == count and not self._reader.done():
                self._line_added.clear()
                await self._line_added.wait()

    async def url(self) -> str:
        line = await self.wait_line("serving on ")
        return line.split("serving on ")[1].split()[0].rstrip("/")

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        return code


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    """Collects started processes and makes sure none outlives the test."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                await p.proc.wait()
            await asyncio.gather(p._reader, return_exceptions=True)


async def start(
    procs: list[Proc], name: str, args: Sequence[str], env: dict[str, str] | None = None
) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oddstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Several gateways share the machine: none opens the operator port.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ODDSTREAM_OPS_PORT": "0", **(env or {})},
        cwd=ROOT,
    )
    p = Proc(name, proc)
    procs.append(p)
    return p


def services(*args: str, script: str = "services.sh") -> None:
    """``scripts/services.sh ARGS`` (kill/start/restart of Kafka or Redis), or another
    script of ours (``redis-cluster.sh kill PORT``...)."""
    subprocess.run(
        [str(ROOT / "scripts" / script), *args],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
