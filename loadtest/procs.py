"""Child processes of the benchmark: started in their own process group, their output
collected line by line, measured through /proc, and all of them stopped on exit, however
the benchmark exits (normal end, exception, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

_running: list[Child] = []
_lock = threading.Lock()


class Child:
    """One child process (group leader) with its output lines."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(  # noqa: S603 - argv built by the benchmark itself
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        with _lock:
            _running.append(self)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, *needles: str, timeout_s: float) -> str | None:
        """The first line containing any of ``needles``; None on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if any(n in line for n in needles):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._changed.wait(min(left, 0.2))

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM the group, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Whatever the leader left behind in its group goes too.
        _signal_group(self.proc.pid, signal.SIGKILL)
        with _lock:
            if self in _running:
                _running.remove(self)
        self._reader.join(2)
        return self.proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def free_port() -> int:
    """A loopback TCP port the kernel just had free (for a child's own listener)."""
    return free_ports(1)[0]


def free_ports(count: int, *, block: bool = False) -> list[int]:
    """``count`` distinct loopback TCP ports the kernel just had free, all held at once
    while chosen (two calls of :func:`free_port` may return the same one); ``block``:
    consecutive ones (a gateway's workers use ``--ops-port`` + i)."""
    with contextlib.ExitStack() as held:
        for _ in range(100):
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            ports = [int(first.getsockname()[1])]
            try:
                while len(ports) < count:
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", ports[-1] + 1 if block else 0))
                    ports.append(int(sock.getsockname()[1]))
            except OSError:
                continue  # The next port of the block is taken: another start.
            return ports
    raise RuntimeError(f"no {count} free loopback ports")


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop_all() -> None:
    """Stop every child still running (used at exit)."""
    with _lock:
        children = list(_running)
    for child in children:
        _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(0.1, deadline - time.monotonic()))
    for child in children:
        _signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(2)
    with _lock:
        _running.clear()


def install_cleanup() -> None:
    """Stop all children at exit, and turn SIGTERM/SIGHUP into a normal exit."""
    atexit.register(stop_all)

    def on_signal(signum: int, frame: object) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping every process", file=sys.stderr)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


# -- /proc measurements -------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * _PAGE_KIB
    return total


def write_syscalls(pids: Sequence[int]) -> int:
    """Write-family system calls made so far (``syscw`` of /proc/PID/io): with the
    deliveries, how many messages each ``write`` carried (coalescing at work or not)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
