"""How much one ``oddstream dev`` process sustains.

Starts ``oddstream dev`` at a given feed rate, connects N WebSocket clients on 127.0.0.1
(half on the football+tennis lobbies, half on one event each), runs for a bounded time
and prints, per rate: feed messages/s processed, deltas/s produced, frames/s delivered to
clients, and feed-to-client lag (p50/p99/max, from each delta's feed timestamp).

    python -m loadtest.dev_sustain --rates 200,1000,4000 --clients 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time

import websockets

import protocol


async def client(
    url: str, command: str, lags: list[float], counts: list[int], stop: asyncio.Event
) -> None:
    async with websockets.connect(url, max_size=None) as conn:
        await conn.send(command)
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(conn.recv(), 0.5)
            except TimeoutError:
                continue
            counts[0] += 1
            message = protocol.decode_server(raw)
            if isinstance(message, protocol.Delta):
                counts[1] += 1
                lags.append(time.time() * 1000 - message.ts)


def scrape(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def run(rate: float, clients: int, seconds: float) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oddstream.cli",
        "dev",
        "--port",
        "0",
        "--rate",
        str(rate),
        "--web",
        "off",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        base = line.split("serving on ")[1].split()[0].rstrip("/")
        ws = base.replace("http", "ws") + "/ws"
        import httpx

        async with httpx.AsyncClient(base_url=base) as http:
            await asyncio.sleep(1.0)  # Let the feed create some events first.
            events = [e["event_id"] for e in (await http.get("/v1/events")).json()]
            lags: list[float] = []
            counts = [0, 0]
            stop = asyncio.Event()
            commands = []
            for i in range(clients):
                if i % 2 == 0 or not events:
                    commands.append('{"type":"subscribe","lobbies":["football","tennis"]}')
                else:
                    commands.append(
                        json.dumps({"type": "subscribe", "events": [events[i % len(events)]]})
                    )
            tasks = [asyncio.create_task(client(ws, c, lags, counts, stop)) for c in commands]
            await asyncio.sleep(1.0)  # Warm-up: snapshots.
            lags.clear()
            start_counts = list(counts)
            m0 = (await http.get("/metrics")).text
            t0 = time.monotonic()
            await asyncio.sleep(seconds)  # The measurement window (bounded by design).
            elapsed = time.monotonic() - t0
            m1 = (await http.get("/metrics")).text
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        lags.sort()
        received = scrape(m1, "oddstream_relay_received_total") - scrape(
            m0, "oddstream_relay_received_total"
        )
        return {
            "rate": rate,
            "clients": clients,
            "deltas_in_per_s": received / elapsed,
            "frames_out_per_s": (counts[0] - start_counts[0]) / elapsed,
            "deltas_out_per_s": (counts[1] - start_counts[1]) / elapsed,
            "lag_p50_ms": statistics.median(lags) if lags else float("nan"),
            "lag_p99_ms": lags[int(len(lags) * 0.99)] if lags else float("nan"),
            "lag_max_ms": lags[-1] if lags else float("nan"),
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000,4000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = [await run(float(r), args.clients, args.seconds) for r in args.rates.split(",")]
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[h]:.1f}" for h in header))


if __name__ == "__main__":
    asyncio.run(main())
