"""``oddstream gateway --workers N``: every core of a node serving one port.

A Python process runs on one core, so a node's other cores serve through more processes.
The supervisor (this module, the process the command started) reserves the address, forks
N workers before any event loop or thread exists, and then stays out of the data path:
each worker is a whole gateway (its own Redis relay, hub and clients) listening on the
same address with ``SO_REUSEPORT``, so the kernel spreads new connections over them.
Worker ``i``'s operator listener is ``--ops-port`` + ``i`` (its own metrics and probes).

Lifecycle (docs/deployment.md, "Every core of a node"):

* start-up: the URL is printed once every worker listens. A worker that exits before
  then stops the gateway with its status: a bad setting or an unreachable Redis is the
  same for every worker, so the command fails once, as a single process would;
* SIGTERM/SIGINT: forwarded to every worker, which drains its clients (``reconnect``)
  exactly as a single gateway does; a second signal is forwarded too (stop at once). The
  supervisor exits 0 when all have gone, killing any still there after the drain bound;
* a worker that dies afterwards (a crash, the OOM killer) is started again on its seat;
  more than :data:`RESTARTS` in :data:`RESTART_WINDOW_S` stop them all with status 1 (a
  crash loop is for the operator or the orchestrator to see, not to hide);
* the supervisor itself killed outright: the kernel tells each worker
  (``PR_SET_PDEATHSIG``), which drains and exits.

Workers run in a process group of their own, so a terminal's Ctrl-C reaches only the
supervisor, which forwards it once (not twice, which would skip the drain).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import selectors
import signal
import sys
import time
from collections import deque

from oddstream.options import GatewaySettings
from server.serve import Seat, announce, bind

log = logging.getLogger("oddstream.workers")

#: Unexpected worker exits tolerated within :data:`RESTART_WINDOW_S` (more: stop, status 1).
RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Beyond the drain and close bounds, how long workers get before they are killed.
STOP_MARGIN_S = 5.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1


def count(setting: int) -> int:
    """How many workers ``--workers`` asks for (0: one per core this process may use)."""
    if setting > 0:
        return setting
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def supervise(settings: GatewaySettings, workers: int) -> int:
    """Serve with ``workers`` processes until they are stopped; the exit status."""
    server = settings.server
    reservation = bind(server.host, server.port, flags="--host/--port", shared=True, listen=False)
    try:
        port = reservation.getsockname()[1]
        seated = dataclasses.replace(settings, server=dataclasses.replace(server, port=port))
        return _Supervisor(seated, workers, reservation.fileno()).run()
    finally:
        reservation.close()


class _Supervisor:
    def __init__(self, settings: GatewaySettings, workers: int, reservation_fd: int):
        self.settings = settings
        self.workers = workers
        self.pid = os.getpid()
        self.seats: dict[int, int] = {}  # worker pid -> seat index
        self.ready = 0
        self.announced = False
        self.stopping = False
        self.status = 0
        self.deadline: float | None = None
        self.exits: deque[float] = deque()
        self.ready_r, self.ready_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.inherited = (self.ready_r, self.wake_r, self.wake_w, reservation_fd)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, _note) for sig in _SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(self.wake_w)
        try:
            for seat in range(self.workers):
                self._start(seat)
            with selectors.DefaultSelector() as selector:
                selector.register(self.ready_r, selectors.EVENT_READ, self._on_ready)
                selector.register(self.wake_r, selectors.EVENT_READ, self._on_signals)
                while self.seats:
                    for key, _ in selector.select(self._timeout()):
                        key.data(os.read(key.fd, 512))
                    if self.deadline is not None and time.monotonic() >= self.deadline:
                        self._kill_all()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self.ready_r, self.ready_w, self.wake_r, self.wake_w):
                os.close(fd)
        return self.status

    # -- the workers ---------------------------------------------------------------------

    def _start(self, seat: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker (the tests see it run)
            status = 1
            try:
                status = self._worker(seat)
            finally:
                os._exit(status)
        self.seats[pid] = seat

    def _worker(self, seat: int) -> int:  # pragma: no cover - runs in the worker
        from oddstream import cli, gateway

        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in self.inherited:
            os.close(fd)
        os.setpgid(0, 0)
        _die_with(self.pid)
        ready_w = self.ready_w

        def ready() -> None:
            os.write(ready_w, b"\x01")

        return cli.role_status(gateway.main(self.settings, Seat(seat, ready)))

    def _on_ready(self, data: bytes) -> None:
        self.ready += len(data)
        if self.announced:
            log.info("a restarted worker is serving (%d of %d)", len(self.seats), self.workers)
        elif self.ready >= self.workers:
            self.announced = True
            server = self.settings.server
            ops = server.ops_port or None
            announce(server, server.port, ops, self.workers)

    def _on_signals(self, data: bytes) -> None:
        for signum in data:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum))

    def _reap(self) -> None:
        while self.seats:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            seat = self.seats.pop(pid, None)
            if seat is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if not self.announced:
                self.status = code or 1  # Start-up failed: the same for every worker.
                self._stop(signal.SIGTERM)
            elif self._crash_loop():
                log.error(
                    "worker %d exited (%d) the %d. time in %.0f s: stopping the gateway",
                    seat, code, RESTARTS + 1, RESTART_WINDOW_S,
                )  # fmt: skip
                self.status = 1
                self._stop(signal.SIGTERM)
            else:
                log.warning("worker %d (pid %d) exited (%d): starting it again", seat, pid, code)
                self._start(seat)

    def _crash_loop(self) -> bool:
        now = time.monotonic()
        self.exits.append(now)
        while self.exits and self.exits[0] < now - RESTART_WINDOW_S:
            self.exits.popleft()
        return len(self.exits) > RESTARTS

    def _stop(self, sig: signal.Signals) -> None:
        """Forward ``sig``; the first one drains, a second stops at once."""
        server = self.settings.server
        bound = server.close_timeout_s + STOP_MARGIN_S
        if not self.stopping:
            self.stopping = True
            bound += server.drain_s
        now = time.monotonic()
        self.deadline = min(self.deadline or now + bound, now + bound)
        for pid in self.seats:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill_all(self) -> None:
        log.warning("%d worker(s) still running after the drain bound: killing", len(self.seats))
        self.deadline = None
        for pid in self.seats:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _timeout(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def _note(signum: int, frame: object) -> None:
    """Signals are read from the wake-up pipe; the handler only has to exist."""


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the worker
    """Ask the kernel for SIGTERM when the supervisor dies (Linux); a worker whose
    supervisor is already gone drains at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
