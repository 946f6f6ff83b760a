"""The fan-out benchmark: oddstream against the machine's ceilings and real peers, in one run.

    python -m loadtest.bench --full --json docs/bench/latest.json   # the record
    python -m loadtest.bench --quick --json out.json
    python -m loadtest.bench --scenarios ws_5k,sse_5k --repeat 3

Per scenario it starts each system under test (``loadtest.gateway_driver``: the oddstream
gateway; ``loadtest.ceiling``: pre-encoded frames written straight to the sockets, joined
per client as the gateway joins them (the reference) or one write per frame;
``loadtest.centrifugo_peer``: Centrifugo on one core and on all; ``loadtest.workers_peer``:
``oddstream gateway --workers N`` through Redis; ``loadtest.broadcaster_peer``: starlette
+ broadcaster; ``loadtest.pushpin_peer``: Pushpin, opt-in), connects the same lean
clients to it (``loadtest.client``, several processes
on 127.0.0.1), and measures two phases with the very same payloads:

* **throughput**: the publisher keeps 8 deliveries per client in flight (it reads what the
  clients counted), so every system is driven at its own maximum with the same queued
  work: delivered messages/s and deltas/s, server CPU (cores), RSS;
* **latency**: fixed rates (20k, then 5k deliveries/s), identical for every system: feed
  timestamp to client receipt, p50/p95/p99/max.

RSS per connection is (RSS with the clients connected and idle - RSS before) / clients,
and again under load. The end-to-end (Kafka + Redis) and ``books`` scenarios are in
:mod:`loadtest.e2e`, the ``replay`` scenario in :mod:`loadtest.replay_bench`. Nothing
here asserts timings: goals are printed as met or not.

``--json`` is rewritten after every scenario, and ``--resume`` keeps what an interrupted
run already measured. ``--profile DIR`` samples the gateway with py-spy. In ``ws_5k`` the
gateway also runs once with its garbage collector tuned (an experiment, reported apart).
Every child process runs in its own process group and is stopped on exit, Ctrl-C included.
See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest import procs, profile
from loadtest.board import (
    H_GEN,
    H_MODE,
    H_PACK,
    H_PUBLISH_US,
    H_PUBLISHER_ALIVE,
    H_RATE_MILLI,
    H_RECORD,
    H_STOP,
    H_SUBS,
    H_WINDOW,
    H_WINDOW_FULL_US,
    MODE_IDLE,
    MODE_RATE,
    MODE_WINDOW,
    S_CLOSED,
    S_CONNECTED,
    S_DELTAS,
    S_DONE,
    S_FAILED,
    S_FRAMES,
    S_READY,
    S_SLOW_CLOSED,
    S_SLOW_DELTAS,
    S_SLOW_FRAMES,
    Board,
    diff,
    max_ms,
    percentiles,
)
from loadtest.payloads import market_ids, subscribe_command
from loadtest.report import figure

SYSTEMS = (
    "oddstream",
    "ceiling_joining",
    "ceiling",
    "centrifugo_1core",
    "centrifugo",
    "broadcaster",
    "pushpin",
)
CEILING = "ceiling_joining"
"""The reference the goals are stated against: the ceiling server writing with the
gateway's own rule (a client's queued frames joined in one write per flush). ``ceiling``
(each frame its own write) is kept as a row for context."""
PACKED = "ceiling_packed"
"""The ceiling writing frames of as many deltas as the batched gateway's messages held
in the same run (measured, rounded), each frame its own write."""
PEERS = ("centrifugo_1core", "centrifugo", "broadcaster", "pushpin")
"""``centrifugo_1core`` is Centrifugo with GOMAXPROCS=1, ``centrifugo`` on every core."""
WORKERS = ("oddstream_workers1", "oddstream_workers2")
#: The 40k hold: three workers on the 2-core node, since one process must hold its share
#: under the 20,000 open-files limit (two would hold at most ~39,900).
HOLD_WORKERS = "oddstream_workers3"
"""The real ``oddstream gateway --workers N`` fed through Redis (``loadtest.workers_peer``):
the scaling rows of ``ws_5k``; "not available" without ODDSTREAM_REDIS or ``--workers``."""
WS_ONLY = ("centrifugo_1core", "centrifugo")
"""Peers run in the WebSocket scenarios only (Centrifugo's SSE is another transport)."""
EXPERIMENT = "oddstream_gc_tuned"
"""The same gateway with the garbage collector tuned (``gateway_driver --gc tuned``): an
experiment backing a proposal in docs/performance.md, never one of the figures judged."""
BATCHED = "oddstream_batched"
"""The same gateway with ``coalesce_ms`` = :data:`BATCH_WINDOW_MS` and clients on
``/ws?batch=1`` (one WebSocket message holds every delta queued for the client), driven
with as many deltas in flight as the packed ceiling: the coalescing goal's figure."""
BATCH_WINDOW_MS = 10
MARKETS = 10
WINDOW_PER_CLIENT = 8
LATENCY_DELIVERIES_PER_S = 20_000
"""The latency phase's load (the e2e goal's figure), the same for every system."""
LOW_LATENCY_DELIVERIES_PER_S = 5_000
"""A second, lighter latency point: latency without queueing on a small machine."""
FD_RESERVE = 64
"""File descriptors a server keeps besides its client sockets."""


@dataclass(frozen=True)
class Timing:
    settle_s: float
    warm_s: float
    measure_s: float
    latency_settle_s: float
    latency_s: float


FULL = Timing(settle_s=2.0, warm_s=2.0, measure_s=6.0, latency_settle_s=2.0, latency_s=6.0)
BRIEF = Timing(settle_s=0.5, warm_s=1.0, measure_s=2.0, latency_settle_s=1.0, latency_s=2.0)
"""The phases of ``--full``: a third of FULL's measured seconds, so that every scenario and
system, three times, fits in about 20 minutes on a 2-core machine. The cost: each
throughput figure is 2 s of deliveries (FULL: 6 s; the three repeats give 6 s in all),
each latency point about 40k samples at 20k/s (10k at 5k/s)."""
QUICK = Timing(settle_s=0.3, warm_s=0.5, measure_s=1.0, latency_settle_s=0.5, latency_s=1.0)


@dataclass(frozen=True)
class Fanout:
    """A fan-out scenario: every client follows the same hot markets (a lobby); every
    publish reaches every client."""

    name: str
    transport: str
    clients: int
    quick_clients: int
    systems: tuple[str, ...] = SYSTEMS
    quick_systems: tuple[str, ...] = ("oddstream", CEILING, "ceiling")
    packed_ceiling: bool = False
    experiment: bool = False
    title: str = ""
    full_repeat: int = 3
    """Repeats under ``--full``: 3 for the scenarios the goals' ratios come from (5k);
    1 for the 1k rows and for ``ws_20k`` (a capacity row whose connecting alone takes most
    of a minute per system), so that the whole run fits in about 20 minutes."""


OPT_IN = {
    "pushpin": (
        "dropped from the default run: Pushpin 1.36 (Debian) fails 3-13 % of the WebSocket "
        "handshakes of the benchmark's connection burst (128 at a time per client process) "
        "with 502 'Error while proxying to origin' (its proxy's 'wsproxysession target "
        "error state=1'; no such request reached zurl, which logged every request it got "
        "as answered by the origin) and closes as many sessions: 61-130 of 1,000 and "
        "605 + 892 of 5,000 in quick runs, with the GRIP origin in its own process. "
        "Run it with --systems ...,pushpin; its rows are then refused while it drops clients"
    ),
    "websockets": (
        "a server-stack candidate (the websockets library's own server, broadcast() per "
        "message; docs/performance.md, server stack choice), not a peer: run it into the "
        "same JSON with --systems ...,websockets"
    ),
    "broadcaster_plain_sse": (
        "a server-stack candidate (starlette + broadcaster with a plain StreamingResponse), "
        "not a peer: run it into the same JSON with --systems ...,broadcaster_plain_sse"
    ),
}
"""Systems run only when ``--systems`` names them, each with the reason it is not in the
default run (recorded in the JSON in its place)."""
SSE_SYSTEMS = tuple(s for s in SYSTEMS if s not in WS_ONLY)
FANOUTS = (
    Fanout(
        "ws_1k",
        "ws",
        1_000,
        100,
        quick_systems=SYSTEMS,
        title="WebSocket fan-out, 1k",
        full_repeat=1,
    ),
    Fanout(
        "ws_5k",
        "ws",
        5_000,
        200,
        systems=(*SYSTEMS, *WORKERS, "websockets"),
        packed_ceiling=True,
        experiment=True,
        title="WebSocket fan-out, 5k",
    ),
    Fanout("ws_20k", "ws", 20_000, 300, title="WebSocket fan-out, 20k", full_repeat=1),
    Fanout(
        "sse_1k",
        "sse",
        1_000,
        100,
        SSE_SYSTEMS,
        SSE_SYSTEMS,
        title="SSE fan-out, 1k",
        full_repeat=1,
    ),
    Fanout(
        "sse_5k",
        "sse",
        5_000,
        200,
        (*SSE_SYSTEMS, "broadcaster_plain_sse"),
        title="SSE fan-out, 5k",
    ),
)
SCENARIOS = (*(f.name for f in FANOUTS), "hold_40k", "slow_mix", "e2e", "books", "replay", "wire")


@dataclass
class Run:
    """One system measured in one scenario."""

    system: str
    transport: str
    requested: int
    available: bool = True
    reason: str = ""
    values: dict[str, Any] = field(default_factory=dict)


# -- running one system -------------------------------------------------------------------------


def client_processes(n: int) -> int:
    if n <= 500:
        return 1
    return max(2, min(4, math.ceil(n / 5000)))


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _server_argv(system: str, board: Path) -> list[str]:
    if system == EXPERIMENT:
        return [*_server_argv("oddstream", board), "--gc", "tuned"]
    if system == BATCHED:
        return [*_server_argv("oddstream", board), "--coalesce-ms", str(BATCH_WINDOW_MS)]
    common = ["--board", str(board), "--port", "0", "--markets", str(MARKETS)]
    if system == CEILING:
        return procs.python("loadtest.ceiling", *common, "--join")
    if system == PACKED:
        return procs.python("loadtest.ceiling", *common)
    if system == "websockets":  # A stack candidate (loadtest.stack_candidates).
        return procs.python("loadtest.stack_candidates", "serve", *common)
    if system in (*WORKERS, HOLD_WORKERS):
        return procs.python("loadtest.workers_peer", *common, "--workers", system[-1])
    if system.startswith("centrifugo"):
        cores = "1" if system == "centrifugo_1core" else "0"
        return procs.python("loadtest.centrifugo_peer", *common, "--cores", cores)
    if system == "broadcaster_plain_sse":
        return procs.python("loadtest.broadcaster_peer", *common, "--sse", "plain")
    module = {
        "oddstream": "loadtest.gateway_driver",
        "ceiling": "loadtest.ceiling",
        "broadcaster": "loadtest.broadcaster_peer",
        "pushpin": "loadtest.pushpin_peer",
    }[system]
    return procs.python(module, "--board", str(board), "--port", "0", "--markets", str(MARKETS))


@dataclass(frozen=True)
class Target:
    """Where and how the clients of a system connect."""

    url: str
    command: str | None = None
    subprotocol: str | None = None
    protocol: str = "oddstream"


def _client_target(system: str, transport: str, base: str) -> Target:
    markets = market_ids(MARKETS)
    host = base.split("://", 1)[1].rstrip("/")
    if system.startswith("centrifugo"):
        from loadtest.centrifugo_peer import connect_command

        url = f"ws://{host}/connection/websocket"
        return Target(url, connect_command(markets), protocol="centrifugo")
    if transport == "ws":
        if system.startswith("oddstream"):
            query = "?batch=1" if system == BATCHED else ""
            command = subscribe_command(markets).decode()
            return Target(f"ws://{host}/ws{query}", command, "oddstream.v1.json")
        return Target(f"ws://{host}/ws", subscribe_command(markets).decode())
    if system.startswith("oddstream"):
        return Target(f"http://{host}/sse?markets={','.join(markets)}")
    return Target(f"http://{host}/sse")


def new_board(slots: int) -> Board:
    """A fresh scoreboard file, in shared memory where there is some."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs, by design
    fd, name = tempfile.mkstemp(prefix="oddstream-bench-", dir=shm)
    os.close(fd)
    return Board(Path(name), slots, create=True)


class Sample:
    """Counters, CPU and RSS at one moment."""

    def __init__(
        self,
        board: Board,
        pids: Sequence[int],
        clients: Sequence[int] = (),
        publisher: Sequence[int] = (),
    ):
        self.t = time.monotonic()
        self.client_cpu = procs.cpu_seconds(clients)
        self.publisher_cpu = procs.cpu_seconds(publisher)
        self.frames = board.total(S_FRAMES)
        self.deltas = board.total(S_DELTAS)
        self.slow_frames = board.total(S_SLOW_FRAMES)
        self.slow_deltas = board.total(S_SLOW_DELTAS)
        self.cpu = procs.cpu_seconds(pids)
        self.rss = procs.rss_kib(pids)
        self.writes = procs.write_syscalls(pids)
        self.publishing_s = board.get(H_PUBLISH_US) / 1e6
        self.window_full_s = board.get(H_WINDOW_FULL_US) / 1e6


def measure(
    system: str,
    transport: str,
    clients: int,
    timing: Timing,
    *,
    latency_rate: float | None = LATENCY_DELIVERIES_PER_S,
    latency_fraction: float | None = None,
    throughput: bool = True,
    pack: int = 1,
    window_per_client: int = WINDOW_PER_CLIENT,
    slow_every: int = 0,
    extra_latency_rates: Sequence[float] = (),
    profile_to: Path | None = None,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> Run:
    """Run one system through the phases. ``latency_rate`` is deliveries/s for the latency
    phase; with ``latency_fraction`` it is that fraction of the measured throughput."""
    run = Run(system, transport, clients)
    run.values.update(provenance())
    began = time.monotonic()
    n_procs = client_processes(clients)
    board = new_board(n_procs)
    server: procs.Child | None = None
    children: list[procs.Child] = []
    try:
        server = procs.Child(system, _server_argv(system, board.path), env=env)
        line = server.wait_line("serving on", "not available", timeout_s=40)
        if line is None or "not available" in line:
            run.available = False
            reason = line.split("not available", 1)[1].strip(" ()") if line else ""
            run.reason = reason or f"did not start: {server.tail(5)!r}"
            log(f"  {system}: not available ({run.reason})")
            return run
        base = line.split("serving on ", 1)[1].split()[0]
        measured = server.pid
        # A peer that runs a server of its own names its pid before it says it serves.
        pid_line = next((x for x in server.lines if ": pid " in x), None)
        if pid_line:
            measured = int(pid_line.rsplit(" ", 1)[1])
        time.sleep(0.5)
        base_rss = procs.rss_kib(procs.tree(measured))
        target = _client_target(system, transport, base)
        children = spawn_clients(
            board,
            target.url,
            clients,
            command=target.command,
            subprotocol=target.subprotocol,
            protocol=target.protocol,
            slow_every=slow_every,
        )
        connected, failed = wait_connected(board, children, [server], clients)
        run.values.update(clients=clients, connected=connected, connect_failed=failed)
        if connected == 0:
            run.available = False
            run.reason = "no client could connect: " + " | ".join(
                c.tail(3) for c in [server, *children]
            )
            log(f"  {system}: {run.reason}")
            return run
        time.sleep(timing.settle_s + connected / 10_000)
        pids = procs.tree(measured)
        client_pids = [c.pid for c in children]
        idle_rss = procs.rss_kib(pids)
        run.values.update(
            rss_base_kib=base_rss,
            rss_idle_kib=idle_rss,
            rss_kib_per_conn=round((idle_rss - base_rss) / connected, 2),
        )
        board.set(H_SUBS, connected)
        board.set(H_PACK, pack)
        run.values.update(wait_subscribed(board, connected))
        if throughput:
            board.set(H_WINDOW, window_per_client * connected * pack)
            _mode(board, MODE_WINDOW)
            time.sleep(timing.warm_s)
            sampler = (
                profile.start(server.pid, timing.measure_s, profile_to) if profile_to else None
            )
            gc0 = _gc_seconds(server)
            # A peer's publisher is its wrapper process (the server is its child): its CPU.
            publisher = [server.pid] if measured != server.pid else []
            a = Sample(board, pids, client_pids, publisher)
            time.sleep(timing.measure_s)
            b = Sample(board, pids, client_pids, publisher)
            gc1 = _gc_seconds(server)
            if gc0 is not None and gc1 is not None and b.cpu > a.cpu:
                run.values["gc_share_of_cpu"] = round((gc1 - gc0) / (b.cpu - a.cpu), 2)
            span = b.t - a.t
            if profile_to is not None:
                summary = profile.finish(sampler, profile_to, 10, log)
                if summary is not None:
                    run.values["profile"] = str(summary)
            run.values.update(
                delivered_per_s=round((b.frames + b.slow_frames - a.frames - a.slow_frames) / span),
                deltas_per_s=round((b.deltas + b.slow_deltas - a.deltas - a.slow_deltas) / span),
                cpu_cores=round((b.cpu - a.cpu) / span, 2),
                client_cpu_cores=round((b.client_cpu - a.client_cpu) / span, 2),
                loadavg=procs.loadavg(),
                write_syscalls_per_s=round((b.writes - a.writes) / span),
                # The publisher is not the bound when it mostly waits on a full window.
                publisher_busy_share=round((b.publishing_s - a.publishing_s) / span, 3),
                publisher_cpu_cores=round((b.publisher_cpu - a.publisher_cpu) / span, 2)
                if publisher
                else None,
                publisher_window_full_share=round((b.window_full_s - a.window_full_s) / span, 3),
                rss_load_kib=b.rss,
                rss_kib_per_conn_load=round((b.rss - base_rss) / connected, 2),
            )
            _mode(board, MODE_IDLE)
            run.values["drain_s"] = drain(board)
        if latency_fraction is not None and run.values.get("delivered_per_s"):
            latency_rate = latency_fraction * run.values["delivered_per_s"]
        if latency_rate:
            run.values.update(
                _latency(board, pids, latency_rate, connected, pack, timing, slow_every)
            )
            if not throughput:
                rss = procs.rss_kib(pids)
                run.values["rss_kib_per_conn_load"] = round((rss - base_rss) / connected, 2)
            for extra in extra_latency_rates:
                _mode(board, MODE_IDLE)
                drain(board)
                figures = _latency(board, pids, extra, connected, pack, timing, slow_every)
                run.values.setdefault("latency_at", {})[str(round(extra))] = figures
        _mode(board, MODE_IDLE)
        run.values.update(
            closed_by_server=board.total(S_CLOSED),
            slow_closed_by_server=board.total(S_SLOW_CLOSED),
            publisher_alive=board.get(H_PUBLISHER_ALIVE) > 0,
        )
        failed = next((x for x in server.lines if "publisher failed" in x), "")
        reason = refusal(clients, connected, run.values["closed_by_server"])
        if run.values["subscribed"] < connected:
            never = connected - run.values["subscribed"]
            reason = "; ".join(filter(None, (reason, f"{never} clients never got a delta")))
        withhold(run.values, "; ".join(filter(None, (failed, reason))))
        run.values["wall_s"] = round(time.monotonic() - began, 1)  # For the run's budget.
        return run
    finally:
        stop_clients(board, children)
        if server is not None:
            server.stop(10)
        board.close()
        with contextlib.suppress(OSError):
            board.path.unlink()


WITHHELD = (
    "delivered_per_s",
    "deltas_per_s",
    "latency_at",
    *(f"{p}_ms" for p in ["p50", "p95", "p99", "max"]),
)
"""What a run that lost clients does not report (its survivors had more of the server)."""


def refusal(requested: int, connected: int, closed: int) -> str:
    """Why a run's throughput and latency cannot be compared ("" when they can): a system
    that refused clients or closed some while measured served fewer than the others."""
    reasons = []
    if connected < requested:
        reasons.append(f"{requested - connected} of {requested} clients could not connect")
    if closed:
        reasons.append(f"the server closed {closed} of {connected} clients while measured")
    return "; ".join(reasons)


def withhold(values: dict[str, Any], reason: str) -> None:
    """Move a refused run's figures under ``withheld`` and say why in ``refused``."""
    if not reason:
        return
    values["refused"] = reason
    values["withheld"] = {k: values.pop(k) for k in WITHHELD if k in values}


def spawn_clients(
    board: Board,
    url: str,
    clients: int,
    *,
    command: str | None = None,
    commands_file: Path | None = None,
    subprotocol: str | None = None,
    protocol: str = "oddstream",
    slow_every: int = 0,
) -> list[procs.Child]:
    """Start the client processes, one per board slot, the connections spread evenly."""
    n_procs = board.slots
    per = [clients // n_procs + (1 if i < clients % n_procs else 0) for i in range(n_procs)]
    children = []
    first = 0
    for slot, count in enumerate(per):
        argv = ["--board", str(board.path), "--slot", str(slot), "--url", url]
        argv += ["--count", str(count), "--first", str(first), "--slow-every", str(slow_every)]
        if command:
            argv += ["--command", command]
        if commands_file:
            argv += ["--commands-file", str(commands_file)]
        if subprotocol:
            argv += ["--subprotocol", subprotocol]
        if protocol != "oddstream":
            argv += ["--protocol", protocol]
        children.append(procs.Child(f"clients-{slot}", procs.python("loadtest.client", *argv)))
        first += count
    return children


def wait_connected(
    board: Board, children: Sequence[procs.Child], servers: Sequence[procs.Child], clients: int
) -> tuple[int, int]:
    """Wait until every client process has tried all its connections (bounded by a
    deadline that grows with the count); returns (connected, failed)."""
    deadline = time.monotonic() + 30 + clients / 100
    while board.total(S_DONE) < len(children) and time.monotonic() < deadline:
        if not all(s.alive() for s in servers) or not all(c.alive() for c in children):
            break
        time.sleep(0.1)  # Waiting for the connections, bounded by the deadline.
    return board.total(S_CONNECTED), board.total(S_FAILED)


def stop_clients(board: Board, children: Sequence[procs.Child]) -> None:
    board.set(H_STOP, 1)
    end = time.monotonic() + 10
    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(max(0.1, end - time.monotonic()))
        c.stop(2)


SUBSCRIBE_PUBLISHES_PER_S = 50


def wait_subscribed(board: Board, connected: int) -> dict[str, Any]:
    """Publish slowly until every client has received a delta: a server may subscribe a
    client well after its handshake (Centrifugo takes seconds for a burst of connect and
    subscribe commands), and a publish it misses would stay "in flight" for ever in the
    window. Bounded; then the queues drain."""
    board.set(H_RATE_MILLI, SUBSCRIBE_PUBLISHES_PER_S * 1000)
    _mode(board, MODE_RATE)
    started = time.monotonic()
    deadline = started + 10 + connected / 1000
    while board.total(S_READY) < connected and time.monotonic() < deadline:
        time.sleep(0.05)  # Polling the clients' counters, bounded by the deadline.
    waited = time.monotonic() - started
    _mode(board, MODE_IDLE)
    drain(board)
    return {"subscribed": board.total(S_READY), "subscribe_wait_s": round(waited, 2)}


def _latency(
    board: Board,
    pids: Sequence[int],
    rate: float,
    connected: int,
    pack: int,
    timing: Timing,
    slow_every: int,
) -> dict[str, Any]:
    """One latency phase: ``rate`` deliveries/s, evenly paced; the fast clients' feed
    timestamp to receipt percentiles (and the slow clients' apart)."""
    board.set(H_RATE_MILLI, max(1, round(rate / connected / pack * 1000)))
    _mode(board, MODE_RATE)
    time.sleep(timing.latency_settle_s)
    fast0, slow0 = board.histogram(), board.histogram(slow=True)
    board.set(H_RECORD, 1)
    a = Sample(board, pids)
    time.sleep(timing.latency_s)
    b = Sample(board, pids)
    board.set(H_RECORD, 0)
    fast = diff(board.histogram(), fast0)
    span = b.t - a.t
    pct = percentiles(fast, (50, 95, 99))
    out: dict[str, Any] = {
        "latency_offered_per_s": round(rate),
        "latency_delivered_per_s": round(
            (b.frames + b.slow_frames - a.frames - a.slow_frames) / span
        ),
        "latency_cpu_cores": round((b.cpu - a.cpu) / span, 2),
        "p50_ms": _r(pct[50]),
        "p95_ms": _r(pct[95]),
        "p99_ms": _r(pct[99]),
        "max_ms": _r(max_ms(fast)),
        "latency_samples": sum(fast),
    }
    if slow_every:
        slow = diff(board.histogram(slow=True), slow0)
        spct = percentiles(slow, (50, 99))
        out.update(slow_p50_ms=_r(spct[50]), slow_p99_ms=_r(spct[99]), slow_samples=sum(slow))
    return out


def drain(board: Board, timeout_s: float = 60.0, *, live: bool = False) -> float:
    """Wait until what was queued has reached the clients, so that it does not count as
    latency; returns the time taken (bounded by ``timeout_s``).

    With the publisher idle, that is when nothing arrives for half a second. With a live
    feed (``live``: e2e) the stream never stops; then it is the end of the subscription
    burst: when the arrival rate over one second stops falling."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    while time.monotonic() - started < timeout_s:
        t = time.monotonic()
        samples.append((t, board.total(S_FRAMES) + board.total(S_SLOW_FRAMES)))
        if live:
            if len(samples) > 40:  # Two seconds of 50 ms samples.
                recent = samples[-1][1] - samples[-21][1]
                before = samples[-21][1] - samples[-41][1]
                if recent >= 0.9 * before:
                    break
        else:
            quiet = [n for ts, n in samples if t - ts <= 0.5]
            if t - started >= 0.5 and quiet[0] == quiet[-1]:
                break
        time.sleep(0.05)  # Polling the clients' counters, bounded by the timeout.
    return round(time.monotonic() - started, 2)


def _gc_seconds(server: procs.Child) -> float | None:
    """The oddstream gateway's time in the garbage collector so far (it prints it each
    second); None for the other systems."""
    for line in reversed(server.lines[-50:]):
        if line.startswith("gc: "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _mode(board: Board, mode: int) -> None:
    board.set(H_MODE, mode)
    board.set(H_GEN, board.get(H_GEN) + 1)


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- scenarios ----------------------------------------------------------------------------------


SPREAD_KEYS = (
    "delivered_per_s",
    "deltas_per_s",
    "cpu_cores",
    "p50_ms",
    "p99_ms",
    "rss_kib_per_conn",
    "rss_kib_per_conn_load",
)
"""The figures whose spread over repeats is reported (``spread``: min, median, max)."""


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """min, median and max of the measured values (None where nothing was measured)."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return None
    return {"min": got[0], "median": statistics.median(got), "max": got[-1], "n": len(got)}


def retry(run: Run, clients: int) -> bool:
    """Whether a system is worth another repeat: it ran and held its clients."""
    return run.available and not run.values.get("refused") and run.values["connected"] >= clients


def combine(runs: list[Run]) -> Run:
    """One row for the repeats of a system: the run of median throughput (the lower
    middle one for an even count), with every repeat's spread under ``spread``."""
    ok = [r for r in runs if r.available]
    if not ok:
        return runs[0]
    ranked = sorted(ok, key=lambda r: r.values.get("delivered_per_s") or 0)
    chosen = ranked[(len(ranked) - 1) // 2]
    # The lighter latency point is taken in the first round only.
    first = next((r for r in ok if "latency_at" in r.values), None)
    if first is not None:
        chosen.values.setdefault("latency_at", first.values["latency_at"])
    chosen.values["spread"] = {
        key: spread([r.values.get(key) for r in ok]) for key in SPREAD_KEYS
    } | {"p99_ms_low": spread([_low(r.values, "p99_ms") for r in ok])}
    return chosen


def fanout_scenario(
    spec: Fanout,
    quick: bool,
    timing: Timing,
    repeat: int,
    log: Callable[[str], None],
    profile_dir: Path | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    requested = spec.quick_clients if quick else spec.clients
    clients = min(requested, fd_limit() - FD_RESERVE)
    systems = spec.quick_systems if quick else spec.systems
    dropped = {s: why for s, why in OPT_IN.items() if s in systems and s not in only}
    systems = tuple(s for s in systems if s not in dropped and (not only or s in only))
    log(f"\n== {spec.name}: {spec.title} ({clients} clients, {spec.transport}) ==")
    note = ""
    if clients < requested:
        note = (
            f"{requested} requested; {clients} is what one process can hold here "
            f"(RLIMIT_NOFILE hard limit {fd_limit()}, cannot be raised without CAP_SYS_RESOURCE)"
        )
        log(f"  note: {note}")
    # Rounds: every system once, then every system again, so that a noisy moment of the
    # machine falls on all of them rather than on one system's repeats.
    attempts: dict[str, list[Run]] = {system: [] for system in systems}
    for round_ in range(repeat):
        for system in systems:
            tried = attempts[system]
            if tried and not retry(tried[-1], clients):
                continue  # A system that cannot hold the clients is not retried.
            target = None
            if profile_dir is not None and system == "oddstream" and not tried:
                target = profile_dir / f"{spec.name}-oddstream.txt"
            tried.append(
                measure(
                    system,
                    spec.transport,
                    clients,
                    timing,
                    # The lighter latency point in the first round only (time).
                    extra_latency_rates=() if quick or round_ else (LOW_LATENCY_DELIVERIES_PER_S,),
                    profile_to=target,
                    log=log,
                )
            )
            if repeat > 1:
                log(f"  round {round_ + 1}/{repeat}:")
            _log_run(tried[-1], log)
    runs = {system: combine(tried) for system, tried in attempts.items()}
    batched: Run | None = None
    packed: Run | None = None
    if spec.packed_ceiling and "oddstream" in systems:
        # The gateway publishes single deltas (the batching is its own): ten times the
        # window in flight, so its messages can hold many deltas.
        batched = measure(
            BATCHED,
            spec.transport,
            clients,
            timing,
            window_per_client=WINDOW_PER_CLIENT * 10,
            log=log,
        )
        _log_run(batched, log)
        size = batch_size(batched.values)
        if size is not None and "ceiling" in systems:
            # The same deltas in flight as the batched run, in frames of its batch size.
            packed = measure(
                PACKED,
                spec.transport,
                clients,
                timing,
                latency_rate=None,
                pack=size,
                window_per_client=max(1, round(WINDOW_PER_CLIENT * 10 / size)),
                log=log,
            )
            packed.values["pack"] = size
            _log_run(packed, log)
    experiment: Run | None = None
    if spec.experiment and not quick and repeat == 1 and "oddstream" in systems:
        experiment = measure(
            EXPERIMENT,
            spec.transport,
            clients,
            timing,
            extra_latency_rates=(LOW_LATENCY_DELIVERIES_PER_S,),
            log=log,
        )
        _log_run(experiment, log)
    runs.update(
        {
            s: Run(s, spec.transport, clients, available=False, reason=why)
            for s, why in dropped.items()
        }
    )
    result = summarize(spec.name, spec.transport, requested, runs, (*systems, *dropped), note)
    if experiment is not None:
        result["systems"][EXPERIMENT] = (
            experiment.values
            if experiment.available
            else {"available": False, "reason": experiment.reason}
        )
    if batched is not None and batched.available:
        result["batched_deltas_per_s"] = batched.values.get("deltas_per_s")
        result["batched_p99_ms"] = batched.values.get("p99_ms")
        result["batched_deltas_per_message"] = batch_size(batched.values, exact=True)
        result["systems"][BATCHED] = batched.values
    if packed is not None and packed.available:
        result["ceiling_packed_deltas_per_s"] = packed.values.get("deltas_per_s")
        result["ceiling_packed_pack"] = packed.values["pack"]
        result["ratio_batched_to_packed"] = _ratio(
            result.get("batched_deltas_per_s"), packed.values.get("deltas_per_s")
        )
        result["systems"][PACKED] = packed.values
    one, two = (result["systems"].get(w, {}).get("deltas_per_s") for w in WORKERS)
    result["ratio_workers2_to_workers1"] = _ratio(two, one)
    result["ratio_workers2_to_centrifugo"] = _ratio(
        two, result["peers"]["centrifugo"]["deltas_per_s"]
    )
    _log_ratios(result, log)
    return result


def batch_size(values: dict[str, Any], *, exact: bool = False) -> Any:
    """Deltas per WebSocket message of a measured run (deltas/s over messages/s), rounded
    to a whole pack for the packed ceiling; None when nothing was measured."""
    frames, deltas = values.get("delivered_per_s"), values.get("deltas_per_s")
    if not frames or not deltas:
        return None
    return round(deltas / frames, 2) if exact else max(1, round(deltas / frames))


def summarize(
    name: str,
    transport: str,
    requested: int,
    runs: dict[str, Run],
    systems: Sequence[str],
    note: str = "",
) -> dict[str, Any]:
    """The scenario's JSON: oddstream's figures at the top level, the ceiling, the peers,
    and every run in full under ``systems``. Ratios compare deltas delivered per second
    (a system may put several deltas in one WebSocket message: Centrifugo joins queued
    publications with newlines), always between runs of this one scenario."""
    odd = runs.get("oddstream")
    ov = odd.values if odd is not None and odd.available else {}
    cv, fv = (
        run.values if run is not None and run.available else {}
        for run in (runs.get(CEILING), runs.get("ceiling"))
    )
    result: dict[str, Any] = {
        "name": name,
        "transport": transport,
        "measured": bool(ov),
        "clients_requested": requested,
        "clients": ov.get("connected", 0),
        "delivered_per_s": ov.get("delivered_per_s"),
        "deltas_per_s": ov.get("deltas_per_s"),
        "p50_ms": ov.get("p50_ms"),
        "p95_ms": ov.get("p95_ms"),
        "p99_ms": ov.get("p99_ms"),
        "max_ms": ov.get("max_ms"),
        "cpu_cores": ov.get("cpu_cores"),
        "rss_kib_per_conn": ov.get("rss_kib_per_conn"),
        "rss_kib_per_conn_load": ov.get("rss_kib_per_conn_load"),
        "latency_offered_per_s": ov.get("latency_offered_per_s"),
        "low_rate": LOW_LATENCY_DELIVERIES_PER_S,
        "p50_ms_low": _low(ov, "p50_ms"),
        "p99_ms_low": _low(ov, "p99_ms"),
        "ceiling_p99_ms_low": _low(cv, "p99_ms"),
        "ceiling_per_s": cv.get("delivered_per_s"),
        "ceiling_p99_ms": cv.get("p99_ms"),
        "ratio_to_ceiling": _ratio(ov.get("deltas_per_s"), cv.get("deltas_per_s")),
        "ceiling_kind": CEILING,
        "per_frame_ceiling_per_s": fv.get("delivered_per_s"),
        "ratio_to_per_frame_ceiling": _ratio(ov.get("deltas_per_s"), fv.get("deltas_per_s")),
        "peers": {},
        "ratio_to_peer": {},
        "note": note,
        "systems": {},
    }
    for peer in PEERS:
        run = runs.get(peer)
        pv = run.values if run is not None and run.available else {}
        if run is None:
            reason = "not run in this mode"
        elif not run.available:
            reason = run.reason
        else:
            reason = pv.get("refused", "")
        result["peers"][peer] = {
            "available": bool(pv),
            "reason": reason,
            "delivered_per_s": pv.get("delivered_per_s"),
            "deltas_per_s": pv.get("deltas_per_s"),
            "p50_ms": pv.get("p50_ms"),
            "p99_ms": pv.get("p99_ms"),
            "p99_ms_low": _low(pv, "p99_ms"),
            "cpu_cores": pv.get("cpu_cores"),
            "rss_kib_per_conn": pv.get("rss_kib_per_conn"),
            "publisher_busy_share": pv.get("publisher_busy_share"),
            "publisher_cpu_cores": pv.get("publisher_cpu_cores"),
            "publisher_window_full_share": pv.get("publisher_window_full_share"),
        }
        result["ratio_to_peer"][peer] = _ratio(ov.get("deltas_per_s"), pv.get("deltas_per_s"))
    for system in systems:
        run = runs.get(system)
        if run is not None:
            result["systems"][system] = (
                run.values if run.available else {"available": False, "reason": run.reason}
            )
    return result


def _low(values: dict[str, Any], key: str) -> float | None:
    """A figure of the lighter latency point."""
    low = values.get("latency_at", {}).get(str(LOW_LATENCY_DELIVERIES_PER_S), {})
    value: float | None = low.get(key)
    return value


def failed_scenario(name: str, why: str) -> dict[str, Any]:
    """The JSON of a scenario that could not run: every key, no figure."""
    peer = {"available": False, "reason": why, "delivered_per_s": None, "p99_ms": None}
    return {
        "name": name,
        "measured": False,
        "skipped": False,
        "note": f"failed: {why}",
        "clients": 0,
        **dict.fromkeys(
            (
                "delivered_per_s",
                "deltas_per_s",
                "p50_ms",
                "p99_ms",
                "rss_kib_per_conn",
                "ceiling_per_s",
                "ratio_to_ceiling",
            )
        ),
        "peers": {p: dict(peer) for p in PEERS},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b to three places; None unless both were measured (and b is not 0)."""
    if a is None or not b:
        return None
    return round(a / b, 3)


def _log_run(run: Run, log: Callable[[str], None]) -> None:
    if not run.available:
        return
    if run.values.get("refused"):
        log(f"  {run.system:<17} not reported: {run.values['refused']}")
    v = {**run.values, **run.values.get("withheld", {})}
    per_write = _ratio(v.get("delivered_per_s"), v.get("write_syscalls_per_s"))
    log(
        f"  {run.system:<17} conn {figure(v.get('connected')):>6}  "
        f"delivered/s {figure(v.get('delivered_per_s')):>9}  "
        f"deltas/s {figure(v.get('deltas_per_s')):>9}  "
        f"cpu {figure(v.get('cpu_cores'), '.2f')} "
        f"(clients {figure(v.get('client_cpu_cores'), '.2f')})  "
        f"msgs/write {figure(per_write, '.1f')}  "
        f"lat@{figure(v.get('latency_offered_per_s'))}/s p50 {figure(v.get('p50_ms'), '.1f')} "
        f"p95 {figure(v.get('p95_ms'), '.1f')} p99 {figure(v.get('p99_ms'), '.1f')} "
        f"max {figure(v.get('max_ms'), '.1f')} ms  "
        f"lat@{figure(LOW_LATENCY_DELIVERIES_PER_S)}/s p50 {figure(_low(v, 'p50_ms'), '.1f')} "
        f"p99 {figure(_low(v, 'p99_ms'), '.1f')} ms  "
        f"KiB/conn idle {figure(v.get('rss_kib_per_conn'), '.1f')} "
        f"load {figure(v.get('rss_kib_per_conn_load'), '.1f')}"
        + (f"  closed {v['closed_by_server']}" if v.get("closed_by_server") else "")
        + (f"  gc {v['gc_share_of_cpu']:.0%} of cpu" if "gc_share_of_cpu" in v else "")
    )


def _log_ratios(result: dict[str, Any], log: Callable[[str], None]) -> None:
    parts = [f"oddstream/ceiling {figure(result['ratio_to_ceiling'], '.2f')}"]
    for peer in PEERS:
        ratio = result["ratio_to_peer"][peer]
        if result["peers"][peer]["available"]:
            parts.append(f"oddstream/{peer} {figure(ratio, '.2f')}")
        else:
            reason = result["peers"][peer]["reason"] or "unavailable"
            parts.append(
                f"{peer}: not available ({reason})"
                if "not run" not in reason
                else f"{peer}: {reason}"
            )
    log("  ratios: " + ", ".join(parts))


def hold_scenario(quick: bool, timing: Timing, log: Callable[[str], None]) -> dict[str, Any]:
    """40,000 WebSocket clients held by ``oddstream gateway --workers 3`` on the 2-core
    node (clients in four processes of 10k, each under the open-files limit): memory per
    connection from the gateway's whole process tree, then latency at the light rate over
    all of them. Each worker must stay under the open-files limit too (two would hold at
    most twice what one process can), hence three."""
    requested = 400 if quick else 40_000
    workers = int(HOLD_WORKERS[-1])
    clients = min(requested, workers * (fd_limit() - FD_RESERVE))
    log(f"\n== hold_40k: {clients} WebSocket clients on {workers} gateway workers ==")
    run = measure(
        HOLD_WORKERS,
        "ws",
        clients,
        timing,
        throughput=False,
        latency_rate=LOW_LATENCY_DELIVERIES_PER_S,
        log=log,
    )
    _log_run(run, log)
    v = run.values
    return {
        "name": "hold_40k",
        "transport": "ws",
        "measured": run.available and not v.get("refused"),
        "clients_requested": requested,
        "clients": v.get("connected", 0),
        "rss_kib_per_conn": v.get("rss_kib_per_conn"),
        "rss_kib_per_conn_load": v.get("rss_kib_per_conn_load"),
        "p50_ms": v.get("p50_ms"),
        "p99_ms": v.get("p99_ms"),
        "note": "; ".join(
            filter(
                None,
                (
                    run.reason,
                    v.get("refused", ""),
                    f"{requested} requested; {workers} workers under the open-files limit "
                    f"hold {clients}"
                    if clients < requested
                    else "",
                ),
            )
        ),
        "systems": {HOLD_WORKERS: v if run.available else {"available": False}},
    }


def slow_scenario(quick: bool, timing: Timing, log: Callable[[str], None]) -> dict[str, Any]:
    """10 % of the clients read slowly. The baseline runs the same clients all fast:
    throughput first, then latency at half of it; the mixed run repeats that latency
    phase with the slow clients in. The goal compares the fast clients' p99."""
    clients = 100 if quick else 1000
    log(f"\n== slow_mix: WebSocket, {clients} clients, 10% slow readers ==")
    base = measure("oddstream", "ws", clients, timing, latency_fraction=0.5, log=log)
    _log_run(base, log)
    rate = base.values.get("latency_offered_per_s")
    mixed = (
        measure(
            "oddstream",
            "ws",
            clients,
            timing,
            latency_rate=rate,
            throughput=False,
            slow_every=10,
            log=log,
        )
        if base.available and rate
        else Run("oddstream", "ws", clients, available=False, reason="baseline failed")
    )
    if mixed.available:
        mixed.system = "oddstream+slow"
        _log_run(mixed, log)
    result = summarize("slow_mix", "ws", clients, {"oddstream": base}, ("oddstream",))
    bv, mv = base.values, mixed.values if mixed.available else {}
    result.update(
        measured=bool(bv) and bool(mv),
        fast_p99_ms_without_slow=bv.get("p99_ms"),
        fast_p99_ms_with_slow=mv.get("p99_ms"),
        fast_p50_ms_with_slow=mv.get("p50_ms"),
        slow_p99_ms=mv.get("slow_p99_ms"),
        slow_closed_by_server=mv.get("slow_closed_by_server"),
        p99_ratio=_ratio(mv.get("p99_ms"), bv.get("p99_ms")),
    )
    result["systems"]["oddstream+slow"] = mv or {"available": False, "reason": mixed.reason}
    log(
        f"  fast clients' p99: {figure(bv.get('p99_ms'), '.1f')} ms alone, "
        f"{figure(mv.get('p99_ms'), '.1f')} ms with slow clients "
        f"(x{figure(result['p99_ratio'], '.2f')}); slow clients closed by the server: "
        f"{figure(mv.get('slow_closed_by_server'))}"
    )
    return result


# -- goals --------------------------------------------------------------------------------------


def goals(s: dict[str, dict[str, Any]], quick: bool = False) -> list[dict[str, Any]]:
    """The issue's goals, each marked met / not met / not measured, with the figures.
    A ``--quick`` run is far below the goals' sizes: nothing is marked met or not."""
    out: list[dict[str, Any]] = []

    def add(goal: str, met: bool | None, why: str) -> None:
        if quick:
            met, why = None, f"quick run, sizes below the goal's ({why})"
        out.append({"goal": goal, "met": met, "why": why})

    ws5 = s.get("ws_5k")
    if ws5 and ws5["measured"]:
        ceiling = ws5.get("ratio_to_ceiling")
        add(
            "WS 5k: >= 0.85 x the joining ceiling",
            None if ceiling is None else ceiling >= 0.85,
            f"{figure(ws5['deltas_per_s'])} deltas/s = {figure(ceiling, '.2f')} x the joining "
            f"ceiling ({figure(ws5.get('ceiling_per_s'))}); "
            f"{figure(ws5.get('ratio_to_per_frame_ceiling'), '.2f')} x the per-frame ceiling",
        )
        one = ws5["ratio_to_peer"].get("centrifugo_1core")
        add(
            "WS 5k: >= 3 x Centrifugo at GOMAXPROCS=1",
            None if one is None else one >= 3,
            f"{figure(one, '.2f')} x"
            + _peer_why(ws5["peers"]["centrifugo_1core"])
            + f"; on every core: {figure(ws5['ratio_to_peer'].get('centrifugo'), '.2f')} x"
            + _peer_why(ws5["peers"]["centrifugo"]),
        )
        scaled = ws5.get("ratio_workers2_to_centrifugo")
        workers = ws5.get("systems", {}).get("oddstream_workers2", {})
        add(
            "WS 5k: one gateway process per core >= 2 x Centrifugo on every core",
            None if scaled is None else scaled >= 2,
            f"{figure(scaled, '.2f')} x; workers 2 / 1: "
            f"{figure(ws5.get('ratio_workers2_to_workers1'), '.2f')}"
            + (f" ({workers['reason']})" if workers.get("reason") else ""),
        )
        p99 = ws5.get("p99_ms")
        theirs = [ws5["peers"][c]["p99_ms"] for c in WS_ONLY]
        add(
            "WS 5k: latency at the fixed rate no worse than Centrifugo's",
            None if p99 is None or None in theirs else p99 <= min(t for t in theirs if t),
            f"p99 {figure(p99, '.1f')} ms at {figure(LATENCY_DELIVERIES_PER_S)}/s; Centrifugo "
            f"{' / '.join(figure(t, '.1f') for t in theirs)} ms (one core / every core)",
        )
        batched = ws5.get("batched_deltas_per_s")
        add(
            "coalescing: >= 1M deltas/s per gateway process",
            None if batched is None else batched >= 1_000_000,
            f"{figure(batched)} deltas/s with a {BATCH_WINDOW_MS} ms window and ?batch=1 "
            f"(p99 {figure(ws5.get('batched_p99_ms'))} ms at the latency rate); without "
            f"batches {figure(ws5.get('deltas_per_s'))}; packed ceiling "
            f"{figure(ws5.get('ceiling_packed_deltas_per_s'))} deltas/s in frames of "
            f"{figure(ws5.get('ceiling_packed_pack'))} (the batched run's "
            f"{figure(ws5.get('batched_deltas_per_message'), '.1f')} deltas per message)",
        )
    else:
        for goal in (
            "WS 5k: >= 0.85 x the joining ceiling",
            "WS 5k: >= 3 x Centrifugo at GOMAXPROCS=1",
            "WS 5k: one gateway process per core >= 2 x Centrifugo on every core",
            "WS 5k: latency at the fixed rate no worse than Centrifugo's",
            "coalescing: >= 1M deltas/s per gateway process",
        ):
            add(goal, None, "not measured")
    ws20 = s.get("ws_20k")
    if ws20 and ws20["measured"]:
        kib = ws20.get("rss_kib_per_conn") or 0
        add(
            "20k WS connections per process, <= 16 KiB each idle",
            ws20["clients"] >= 20_000 and kib <= 16,
            f"{ws20['clients']} connected, {figure(kib, '.1f')} KiB each"
            + (f"; {ws20['note']}" if ws20.get("note") else ""),
        )
    else:
        add("20k WS connections per process, <= 16 KiB each idle", None, "not measured")
    hold = s.get("hold_40k")
    if hold and hold["measured"]:
        kib = hold.get("rss_kib_per_conn") or 0
        add(
            "40k WebSocket connections per 2-core node (three workers), <= 12 KiB each",
            hold["clients"] >= 40_000 and kib <= 12,
            f"{figure(hold['clients'])} held, {figure(kib, '.1f')} KiB each; {hold['note']}",
        )
    else:
        add(
            "40k WebSocket connections per 2-core node (three workers), <= 12 KiB each",
            None,
            (hold or {}).get("note") or "not measured",
        )
    e2e = s.get("e2e")
    if e2e and e2e["measured"]:
        p50, p99 = e2e.get("p50_ms"), e2e.get("p99_ms")
        rate = e2e.get("delivered_per_s") or 0
        add(
            "e2e Kafka+Redis, 5k clients, 20k deliveries/s: p50 <= 5 ms, p99 <= 25 ms",
            p50 is not None and p99 is not None and p50 <= 5 and p99 <= 25 and rate >= 18_000,
            f"{e2e['clients']} clients, {figure(rate)} deliveries/s, p50 {figure(p50, '.1f')} ms, "
            f"p99 {figure(p99, '.1f')} ms",
        )
    else:
        reason = (e2e or {}).get("note") or "not measured"
        add(
            "e2e Kafka+Redis, 5k clients, 20k deliveries/s: p50 <= 5 ms, p99 <= 25 ms", None, reason
        )
    sse5 = s.get("sse_5k")
    if sse5 and sse5["measured"] and ws5 and ws5["measured"] and not same_run(sse5, ws5):
        add(
            "SSE: >= 0.7 x WebSocket delivered/s, <= 24 KiB per connection",
            None,
            f"not comparable: sse_5k and ws_5k come from different runs or commits "
            f"({sse5.get('run')} at {sse5.get('commit')}, {ws5.get('run')} at {ws5.get('commit')})",
        )
    elif sse5 and sse5["measured"] and ws5 and ws5["measured"]:
        ratio = _ratio(sse5["deltas_per_s"], ws5["deltas_per_s"])
        kib = sse5.get("rss_kib_per_conn") or 0
        add(
            "SSE: >= 0.7 x WebSocket delivered/s, <= 24 KiB per connection",
            ratio is not None and ratio >= 0.7 and kib <= 24,
            f"{figure(ratio, '.2f')} x WebSocket (5k), {figure(kib, '.1f')} KiB each",
        )
    else:
        add("SSE: >= 0.7 x WebSocket delivered/s, <= 24 KiB per connection", None, "not measured")
    books = s.get("books")
    if books and books["measured"]:
        rate = books.get("feed_per_s") or 0
        add(
            "one books process: >= 50k feed messages/s",
            rate >= 50_000,
            f"{figure(rate)} messages/s",
        )
    else:
        add(
            "one books process: >= 50k feed messages/s",
            None,
            (books or {}).get("note") or "not measured",
        )
    slow = s.get("slow_mix")
    if slow and slow["measured"]:
        ratio = slow.get("p99_ratio")
        add(
            "slow clients: fast clients' p99 within 1.2 x",
            ratio is not None and ratio <= 1.2,
            f"p99 {figure(slow['fast_p99_ms_without_slow'], '.1f')} -> "
            f"{figure(slow['fast_p99_ms_with_slow'], '.1f')} ms (x{figure(ratio, '.2f')}), "
            f"{figure(slow.get('slow_closed_by_server'))} slow clients closed",
        )
    else:
        add("slow clients: fast clients' p99 within 1.2 x", None, "not measured")
    replay = s.get("replay")
    rate = (replay or {}).get("largest_records_s")
    add(
        "replay: >= 100k records/s, largest recording, one process",
        None if rate is None else rate >= 100_000,
        f"{figure(rate)} records/s" if rate is not None else "not measured",
    )
    return out


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two scenarios come from one run at one commit (a --resume keeps the run and
    commit each scenario was measured in): ratios between them are only taken then."""
    return a.get("run") == b.get("run") and a.get("commit") == b.get("commit")


def _peer_why(peer: dict[str, Any]) -> str:
    return f" ({peer['reason']})" if peer.get("reason") else ""


# -- machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "nofile_hard": fd_limit(),
        "loadavg_start": procs.loadavg(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in (
        "oddstream",
        "uvicorn",
        "starlette",
        "websockets",
        "uvloop",
        "msgspec",
        "sse-starlette",
        "broadcaster",
        "redis",
        "hiredis",
        "aiokafka",
        "locust",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    pushpin = _command_version(["pushpin", "--version"])
    out["pushpin"] = pushpin.removeprefix("pushpin ") if pushpin else pushpin
    # go install leaves Centrifugo's own version string empty: the module built says it.
    stamp = procs.ROOT / ".cache" / "go" / "bin" / ".centrifugo.version"
    out["centrifugo"] = stamp.read_text().strip() if stamp.exists() else None
    where = provenance()
    out["git"] = f"{where['commit']}{'+dirty' if where['dirty'] else ''}"
    return out


def provenance() -> dict[str, Any]:
    """The commit the code under test is at, and whether the tree differs from it (every
    row records both: a row from a dirty tree is not a committed figure)."""
    commit = _command_version(["git", "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_version(["git", "-C", str(procs.ROOT), "status", "--porcelain"])
    return {"commit": commit, "dirty": bool(dirty)}


def _command_version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return (
        text.splitlines()[-1]
        if done.returncode == 0 and text
        else ("" if done.returncode == 0 else None)
    )


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description="oddstream fan-out benchmark"
    )
    parser.add_argument("--quick", action="store_true", help="tiny version of every scenario")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--scenarios", help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per system, in rounds; the median run is reported, with min/median/max",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the record: every scenario and system, --repeat 3, the BRIEF phases "
        "(about 20 minutes on 2 cores)",
    )
    parser.add_argument("--e2e-clients", type=int, default=5000)
    parser.add_argument(
        "--e2e-rate", type=float, default=None, help="feed messages/s of the e2e run"
    )
    parser.add_argument("--books-messages", type=int, default=None)
    parser.add_argument("--redis-db", type=int, default=2, help="Redis database the e2e runs own")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the oddstream gateway in each fan-out throughput phase, into DIR",
    )
    parser.add_argument(
        "--systems",
        help="fan-out scenarios: only these systems (comma-separated; for iterating, not "
        "for the record: ratios need the ceiling and the peers)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the scenarios already in the --json file, run the rest (after a crash)",
    )
    args = parser.parse_args(argv)
    wanted = SCENARIOS if not args.scenarios else tuple(args.scenarios.split(","))
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    procs.install_cleanup()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    from loadtest.client import raise_nofile

    raise_nofile()
    if args.full:
        if args.quick:
            parser.error("--full and --quick exclude each other")
        args.repeat = max(args.repeat, 3)
    timing = QUICK if args.quick else BRIEF if args.full else FULL
    started = time.monotonic()
    # This invocation's id: a --resume keeps the scenarios of earlier ones with theirs.
    run_id = datetime.now(UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "version": 1,
        "quick": args.quick,
        "command": " ".join(
            ["python -m loadtest.bench", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "markets": MARKETS,
            "window_per_client": WINDOW_PER_CLIENT,
            "latency_deliveries_per_s": LATENCY_DELIVERIES_PER_S,
            "timing": timing.__dict__,
            "repeat": args.repeat,
        },
        "scenarios": {},
    }
    print(
        f"oddstream bench{' --quick' if args.quick else ''}: {report['machine']['cores']} cores, "
        f"load {report['machine']['loadavg_start']}, Python {report['machine']['python']}",
        flush=True,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    def run_one(name: str, scenario: Callable[[], dict[str, Any]]) -> None:
        # One scenario failing (a peer, a service going away) is reported in its place;
        # the run goes on to the next.
        from redis.exceptions import RedisError

        if name in report["scenarios"]:
            log(f"\n== {name}: kept from {args.json} (--resume) ==")
            return
        try:
            report["scenarios"][name] = scenario()
            where = provenance()
            report["scenarios"][name].update(
                run=run_id,
                commit=f"{where['commit']}{'+dirty' if where['dirty'] else ''}",
            )
        except (OSError, RuntimeError, ValueError, KeyError, RedisError) as exc:
            log(f"  {name}: failed: {exc!r}")
            report["scenarios"][name] = failed_scenario(name, repr(exc))
        save()

    def save() -> None:
        # After every scenario, so a run that is killed keeps what it measured.
        if args.json:
            report["goals"] = goals(report["scenarios"], args.quick)
            report["machine"]["loadavg_end"] = procs.loadavg()
            report["elapsed_s"] = round(time.monotonic() - started + resumed_s, 1)
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(args.json)

    resumed_s = 0.0
    if args.resume and args.json and args.json.exists():
        previous = json.loads(args.json.read_text())
        if previous.get("quick") == args.quick:
            report["scenarios"] = {
                k: v for k, v in previous["scenarios"].items() if v.get("measured")
            }
            report["started"] = previous["started"]
            report["machine"]["loadavg_start"] = previous["machine"]["loadavg_start"]
            report["resumed"] = [
                *previous.get("resumed", []),
                datetime.now(UTC).isoformat(timespec="seconds"),
            ]
            resumed_s = float(previous.get("elapsed_s") or 0)

    try:
        for spec in FANOUTS:
            if spec.name in wanted:
                run_one(
                    spec.name,
                    lambda spec=spec: fanout_scenario(  # type: ignore[misc]
                        spec,
                        args.quick,
                        timing,
                        min(args.repeat, spec.full_repeat) if args.full else max(1, args.repeat),
                        log,
                        args.profile,
                        only=tuple(args.systems.split(",")) if args.systems else (),
                    ),
                )
        if "hold_40k" in wanted:
            run_one("hold_40k", lambda: hold_scenario(args.quick, timing, log))
        if "slow_mix" in wanted:
            run_one("slow_mix", lambda: slow_scenario(args.quick, timing, log))
        if "e2e" in wanted or "books" in wanted:
            from loadtest import e2e

            if "e2e" in wanted:
                run_one(
                    "e2e",
                    lambda: e2e.e2e_scenario(
                        quick=args.quick,
                        clients=args.e2e_clients,
                        rate=args.e2e_rate,
                        redis_db=args.redis_db,
                        log=log,
                        profile_dir=args.profile,
                    ),
                )
            if "books" in wanted:
                run_one(
                    "books",
                    lambda: e2e.books_scenario(
                        quick=args.quick,
                        messages=args.books_messages,
                        redis_db=args.redis_db,
                        log=log,
                        profile_dir=args.profile,
                    ),
                )
        if "wire" in wanted:
            from loadtest import wire

            run_one(
                "wire",
                lambda: {
                    "name": "wire",
                    "measured": True,
                    **wire.measure(2_000 if args.quick else 20_000),
                },
            )
        if "replay" in wanted:
            from loadtest.replay_bench import replay_scenario

            run_one("replay", lambda: replay_scenario(quick=args.quick, log=log))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr, flush=True)
        procs.stop_all()
        save()
        return 130
    except SystemExit:
        procs.stop_all()
        save()
        raise
    report["goals"] = goals(report["scenarios"], args.quick)
    report["machine"]["loadavg_end"] = procs.loadavg()
    report["elapsed_s"] = round(time.monotonic() - started + resumed_s, 1)
    print("\n== goals (printed, never asserted) ==")
    for g in report["goals"]:
        mark = {True: "MET", False: "NOT MET", None: "not measured"}[g["met"]]
        print(f"  [{mark}] {g['goal']}: {g['why']}")
    print(f"\nelapsed {report['elapsed_s']} s; load {report['machine']['loadavg_end']}")
    if args.json:
        save()
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
