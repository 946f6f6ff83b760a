"""GraphQL subscriptions next to the WebSocket protocol, in one run (``docs/graphql.md``).

A gateway process (``--serve``: the real app and edge over a memory store and broker,
publishing ``--rate`` deltas/s round-robin over ``--markets`` markets) serves both; this
process then runs, one after the other, ``--clients`` WebSocket clients (``/ws``, one
``subscribe`` of every market) and as many GraphQL clients (``/graphql``,
``graphql-transport-ws``, one subscription per market selecting ``seq epoch crc
message``), each phase counting for ``--seconds`` the market messages received and the
gateway's CPU time::

    python -m loadtest.graphql_bench --markets 10 --rate 2000 --clients 20 --seconds 5

Prints, per transport, the deliveries per second (all clients), the share of what was
published that arrived (1.0: every client kept up), and the gateway's CPU microseconds
per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import websockets

from loadtest import procs
from loadtest.payloads import DeltaSource, market_ids, seeded_store


async def serve(args: argparse.Namespace) -> None:
    from channels.broker import MemoryBroker
    from channels.names import market_channel
    from server.app import build_app
    from server.gateway import Gateway
    from server.serve import serve as serve_app
    from server.settings import Settings

    settings = Settings(port=args.port, max_connections_per_ip=0, ops_port=0)
    markets = market_ids(args.markets)
    store = seeded_store(markets, settings.history_size)
    broker = MemoryBroker()
    source = DeltaSource(markets)

    def subscribed() -> bool:
        sessions = gateway.sessions
        return len(sessions) >= args.clients and all(
            len(s.markets) >= args.markets for s in sessions
        )

    async def publish() -> None:
        # From the seeded snapshots on (a market's deltas must follow its stored book):
        # once every client holds every market.
        loop = asyncio.get_running_loop()
        start: float | None = None
        sent = 0
        while True:  # Until the benchmark stops this process.
            await asyncio.sleep(0.01)  # The publishing cadence, by design.
            if start is None:
                start = loop.time() if subscribed() else None
                continue
            due = int((loop.time() - start) * args.rate)
            for _ in range(due - sent):
                payload = source.next()
                broker.publish_now((market_channel(source.market),), payload)
            sent = due

    gateway = Gateway(settings, broker, store)
    await serve_app(build_app(gateway, background=[publish]), settings, gateway)


async def _ws_client(url: str, markets: list[str], counts: list[int], ready: asyncio.Event) -> None:
    async with websockets.connect(url + "/ws", max_size=None) as conn:
        await conn.send(json.dumps({"type": "subscribe", "markets": markets}))
        async for raw in conn:
            if b'"delta"' in (raw if isinstance(raw, bytes) else raw.encode()):
                counts[0] += 1
                ready.set()


async def _gql_client(
    url: str, markets: list[str], counts: list[int], ready: asyncio.Event
) -> None:
    async with websockets.connect(
        url + "/graphql",
        subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
        max_size=None,
    ) as conn:
        await conn.send(json.dumps({"type": "connection_init"}))
        for i, market in enumerate(markets):
            query = f'subscription {{ market(id: "{market}") {{ seq epoch crc message }} }}'
            await conn.send(
                json.dumps({"id": str(i), "type": "subscribe", "payload": {"query": query}})
            )
        async for raw in conn:
            if b'"delta"' in (raw if isinstance(raw, bytes) else raw.encode()):
                counts[0] += 1
                ready.set()


async def phase(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One transport against a gateway of its own (publishing starts when every client
    subscribed)."""
    argv = procs.python("loadtest.graphql_bench", "--serve", "--port", str(args.port))
    argv += ["--markets", str(args.markets), "--rate", str(args.rate)]
    argv += ["--clients", str(args.clients)]
    server = procs.Child("gateway", argv)
    try:
        line = server.wait_line("serving on", timeout_s=30)
        if line is None:
            raise RuntimeError("the gateway did not start:\n" + server.tail())
        url = line.split("serving on ", 1)[1].split()[0].rstrip("/").replace("http://", "ws://")
        return await _measure(kind, url, args, server)
    finally:
        server.stop()


async def _measure(
    kind: str, url: str, args: argparse.Namespace, server: procs.Child
) -> dict[str, Any]:
    markets = market_ids(args.markets)
    counts = [0]
    readies = [asyncio.Event() for _ in range(args.clients)]
    client = _ws_client if kind == "websocket" else _gql_client
    tasks = [asyncio.create_task(client(url, markets, counts, r)) for r in readies]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(r.wait() for r in readies))
        before, cpu_before, t0 = counts[0], procs.cpu_seconds([server.pid]), time.perf_counter()
        await asyncio.sleep(args.seconds)  # The measurement window, by design.
        delivered = counts[0] - before
        elapsed = time.perf_counter() - t0
        cpu = procs.cpu_seconds([server.pid]) - cpu_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    expected = args.rate * args.clients * elapsed
    return {
        "transport": kind,
        "deliveries_per_s": round(delivered / elapsed),
        "kept_up": round(delivered / expected, 3),
        "gateway_cpu_share": round(cpu / elapsed, 2),
        "gateway_cpu_us_per_delivery": round(cpu / delivered * 1e6, 2) if delivered else None,
    }


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [await phase(kind, args) for kind in ("websocket", "graphql")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help="be the gateway process")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--markets", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2_000, help="deltas/s published")
    parser.add_argument("--clients", type=int, default=20, help="clients per transport")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args))
        return 0
    procs.install_cleanup()
    print(f"machine load before: {procs.loadavg()}")
    for row in asyncio.run(bench(args)):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
