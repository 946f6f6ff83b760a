"""Server-stack candidates, measured with the same clients and payloads as the bench: what
the gateway's transport could be built on, for the stack choice in docs/performance.md.

* ``websockets``: the websockets library's own asyncio server (no ASGI), one
  ``websockets.broadcast()`` call per message: no per-client await, no per-client queue;
* ``starlette-plain-sse``: starlette + broadcaster with a plain ``StreamingResponse`` that
  yields ``event:``/``data:`` bytes, instead of sse-starlette's ``EventSourceResponse``
  (run it as ``loadtest.broadcaster_peer --sse plain``).

    python -m loadtest.stack_candidates --scenarios ws_1k,ws_5k,sse_1k,sse_5k --json out.json

Prints a table like the bench's; the figures are written with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtest import peer
from loadtest.board import Board
from loadtest.client import raise_nofile
from loadtest.payloads import DeltaSource, market_ids


async def serve_websockets(board: Board, args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    conns: set[ServerConnection] = set()
    source = DeltaSource(market_ids(args.markets))

    async def handler(ws: ServerConnection) -> None:
        conns.add(ws)
        try:
            async for _ in ws:
                pass  # The subscribe command: everyone gets everything here.
        finally:
            conns.discard(ws)

    async def publish(n: int) -> None:
        for _ in range(n):
            broadcast(conns, source.next().decode())

    stop = peer.stop_on_signals()
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        compression=None,
        ping_interval=None,
        max_queue=None,
        backlog=4096,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"websockets: serving on http://127.0.0.1:{bound}/", flush=True)
        await peer.drive_until(board, publish, stop)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "serve":
        return peer.main("websockets-library candidate", args_list[1:], serve_websockets)
    from loadtest import bench, procs

    parser = argparse.ArgumentParser(prog="python -m loadtest.stack_candidates")
    parser.add_argument("--scenarios", default="ws_1k,ws_5k,sse_1k,sse_5k")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--httptools",
        type=Path,
        metavar="DIR",
        help="also run the gateway with httptools importable from DIR (pip install --target "
        "DIR httptools): uvicorn then parses HTTP in C instead of h11",
    )
    parser.add_argument("--only", help="comma-separated candidates to run (default: all)")
    args = parser.parse_args(args_list)
    procs.install_cleanup()
    raise_nofile()
    timing = bench.QUICK if args.quick else bench.FULL
    out: dict[str, Any] = {"machine": bench.machine(), "versions": bench.versions(), "runs": {}}
    for spec in bench.FANOUTS:
        if spec.name not in args.scenarios.split(","):
            continue
        clients = spec.quick_clients if args.quick else spec.clients
        clients = min(clients, bench.fd_limit() - bench.FD_RESERVE)
        print(f"\n== {spec.name} ({clients} clients, {spec.transport}) ==", flush=True)
        candidates: tuple[str, ...] = (
            ("oddstream", "ceiling", "websockets")
            if spec.transport == "ws"
            else ("oddstream", "ceiling", "broadcaster", "broadcaster_plain_sse")
        )
        if args.httptools:
            candidates = (*candidates, "oddstream_httptools")
        if args.only:
            candidates = tuple(c for c in candidates if c in args.only.split(","))
        for system in candidates:
            env = None
            if system == "oddstream_httptools":
                env = {"PYTHONPATH": str(args.httptools.resolve())}
            run = bench.measure(
                "oddstream" if system == "oddstream_httptools" else system,
                spec.transport,
                clients,
                timing,
                extra_latency_rates=() if args.quick else (bench.LOW_LATENCY_DELIVERIES_PER_S,),
                env=env,
            )
            run.system = system
            bench._log_run(run, print)
            out["runs"].setdefault(spec.name, {})[system] = (
                run.values if run.available else {"available": False, "reason": run.reason}
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
