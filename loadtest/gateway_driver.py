"""The oddstream gateway under test, fed at a controlled rate through its broker seam.

One process: the real :class:`server.gateway.Gateway` and starlette app, served by the
real ``server.serve.serve`` (our asyncio edge with h11 and websockets' sans-I/O protocol,
uvloop; the production settings),
over a :class:`channels.store.MemoryStore` seeded with the benchmark's markets and a
:class:`channels.broker.MemoryBroker`. The benchmark publisher encodes each delta once
and publishes it on the market's channel behind the stage stamps' envelope
(``docs/observability.md``), exactly as a book processor does; from there
the gateway's own code runs: relay (decode, seq check, book update), hub fan-out, each
session's outbox and writer. Nothing of the feed or the books is in this process, so its
CPU is the gateway's.

    python -m loadtest.gateway_driver --board /dev/shm/x --port 0 --markets 10

Prints ``oddstream: serving on http://127.0.0.1:PORT/`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

from channels.broker import MemoryBroker
from channels.names import route
from channels.stamps import envelope, now_us
from loadtest.board import Board
from loadtest.client import raise_nofile
from loadtest.payloads import DeltaSource, market_ids, seeded_store, snapshots
from loadtest.publisher import drive


async def run(board: Board, args: argparse.Namespace) -> None:
    from oddstream.options import DevSettings, load
    from server.app import build_app
    from server.gateway import Gateway
    from server.serve import serve

    flags = {
        "host": "127.0.0.1",
        "port": args.port,
        "web": "off",
        "log_level": "warning",
        "queue_frames": args.queue_frames,
        "coalesce_ms": args.coalesce_ms,
        # Every benchmark client comes from loopback: no per-address cap; no operator port.
        "max_connections_per_ip": 0,
        "ops_port": 0,
    }
    settings = load(DevSettings, {k: v for k, v in flags.items() if v is not None}).server
    markets = market_ids(args.markets)
    store = seeded_store(markets, settings.history_size)
    broker = MemoryBroker()
    gateway = Gateway(settings, broker, store)
    source = DeltaSource(markets)
    channels = {s.market_id: (route(s.sport, s.event_id),) for s in snapshots(markets, 0)}

    async def publish(n: int) -> None:
        for _ in range(n):
            payload = source.next()
            stamp = now_us()  # Feed and publish at once: the benchmark has no feed hop.
            broker.publish_now(channels[source.market], envelope(stamp, stamp) + payload)

    async def feed() -> None:
        await drive(board, publish)

    async def freeze() -> None:
        # Sessions, tasks and their frames are long-lived: moving them out of the
        # collector's generations spares every full collection from walking them.
        while True:
            await asyncio.sleep(2)  # The freeze cadence, by design.
            gc.freeze()

    gc_time = [0.0, 0.0, 0.0]
    gc_runs = [0, 0, 0]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_time[info["generation"]] += time.perf_counter() - gc_started[0]
            gc_runs[info["generation"]] += 1

    async def report_gc() -> None:
        # The collector's time so far, each second on stdout: the benchmark reads it
        # around its measurement window (docs/performance.md).
        while True:
            await asyncio.sleep(1)  # The report cadence, by design.
            runs = "/".join(map(str, gc_runs))
            print(f"gc: runs {runs} seconds {sum(gc_time):.3f}", flush=True)

    async def report_memory() -> None:
        # --tracemalloc: on SIGUSR1, where the memory went, by allocation site (stdout).
        import signal
        import tracemalloc

        wanted = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, wanted.set)
        while True:
            await wanted.wait()
            wanted.clear()
            stats = tracemalloc.take_snapshot().statistics("lineno")
            total = sum(s.size for s in stats)
            print(f"memory: {total / 1024:.0f} KiB traced, {len(gateway.sessions)} sessions")
            for stat in stats[:25]:
                print(f"memory: {stat.size / 1024:9.0f} KiB {stat.count:8d} {stat.traceback}")
            print("memory: end", flush=True)

    gc.callbacks.append(on_gc)
    background = [feed, report_gc]
    if args.tracemalloc:
        background.append(report_memory)
    if args.gc == "tuned":
        gc.set_threshold(50_000, 20, 100)
        background.append(freeze)
    app = build_app(gateway, background=background)
    await serve(app, settings, gateway)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the oddstream gateway of loadtest.bench")
    parser.add_argument("--board", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--markets", type=int, default=10)
    parser.add_argument("--queue-frames", type=int, help="per-client outbox bound")
    parser.add_argument("--coalesce-ms", type=float, help="WebSocket write coalescing window")
    parser.add_argument(
        "--gc",
        choices=("default", "tuned"),
        default="default",
        help="experiment: 'tuned' raises the GC thresholds and freezes long-lived objects "
        "every few seconds (not what the product does; see docs/performance.md)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="experiment: trace allocations; SIGUSR1 prints the top allocation sites",
    )
    args = parser.parse_args(argv)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    raise_nofile()
    board = Board.open(args.board)
    import uvloop

    uvloop.run(run(board, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
