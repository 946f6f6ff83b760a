"""Peer 3: Centrifugo (Go), the open-source real-time server, fanning out the same deltas
to the same clients.

This process runs Centrifugo (``.cache/go/bin/centrifugo``, built by
``loadtest/ensure-peers.sh`` from the Go module proxy, or one on PATH) with a throw-away
configuration, set up as an operator would for a public odds feed:

* the memory engine (one node: no broker between the API and the clients);
* ``client.insecure``: clients connect and subscribe without a token (what a public,
  read-only feed does; the gateway's benchmark clients have no token either);
* the JSON protocol on its WebSocket endpoint (``/connection/websocket``), the same frames
  parsed by the same clients as every other system (``loadtest.client --protocol
  centrifugo``: connect, then one subscribe per market, then answer its pings);
* one channel per market (a client follows the ten markets of a lobby, as everywhere);
* publications through its server HTTP API, ``POST /api/batch``: every publish call of the
  benchmark publisher (up to 64 deltas when the window allows) is one HTTP request, so the
  publisher is not the bound (the report shows the publisher's busy share against its
  time waiting on a full window, and the latency phase's achieved rate against the offered
  one).

``--cores N`` runs it with ``GOMAXPROCS=N`` (0: every core).

    python -m loadtest.centrifugo_peer --board /dev/shm/x --port 0 --cores 1

Prints ``centrifugo: pid N`` (the Centrifugo process, which the benchmark measures) and
``centrifugo: serving on http://127.0.0.1:PORT/``, or ``centrifugo: not available (why)``
and exits 3 when the binary is missing or does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest import peer
from loadtest.board import Board
from loadtest.payloads import DeltaSource, market_ids

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / ".cache" / "go" / "bin" / "centrifugo"
_START_TIMEOUT_S = 20.0


def binary() -> str | None:
    if BUILT.is_file() and os.access(BUILT, os.X_OK):
        return str(BUILT)
    return shutil.which("centrifugo")


def config(port: int) -> dict[str, object]:
    """The configuration: everything not set here is Centrifugo's default."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "engine": {"type": "memory"},
        "client": {"insecure": True, "allowed_origins": ["*"]},
        "http_api": {"insecure": True},
        "log": {"level": "error"},
    }


def connect_command(markets: list[str]) -> str:
    """What a client sends after the WebSocket handshake: connect, then one subscribe per
    market, newline-delimited in one frame (the JSON protocol allows it)."""
    commands = [{"id": 1, "connect": {}}]
    commands += [{"id": 2 + i, "subscribe": {"channel": m}} for i, m in enumerate(markets)]
    return "\n".join(json.dumps(c, separators=(",", ":")) for c in commands)


def batch_body(source: DeltaSource, n: int) -> bytes:
    """``n`` publish commands in one server API batch; each delta's bytes are the data."""
    items = []
    for _ in range(n):
        payload = source.next()
        channel = source.market.encode()
        items.append(b'{"publish":{"channel":"' + channel + b'","data":' + payload + b"}}")
    return b'{"commands":[' + b",".join(items) + b"]}"


async def run(board: Board, args: argparse.Namespace, work: Path) -> int:
    import httpx

    port = args.port or peer.free_port()
    (work / "config.json").write_text(json.dumps(config(port)))
    cores = args.cores or os.cpu_count() or 1
    log = (work / "centrifugo.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(binary()),
        "--config",
        str(work / "config.json"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        env={**os.environ, "GOMAXPROCS": str(cores)},
    )
    stop = peer.stop_on_signals()
    try:
        ready = await peer.wait_port(port, time.monotonic() + _START_TIMEOUT_S)
        if not ready or proc.returncode is not None:
            tail = (work / "centrifugo.log").read_text(errors="replace")[-600:]
            print(f"centrifugo: not available (did not start: {tail!r})", flush=True)
            return peer.UNAVAILABLE
        source = DeltaSource(market_ids(args.markets))
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def publish(n: int) -> None:
                body = batch_body(source, n)
                response = await http.post("/api/batch", content=body, headers=headers, timeout=10)
                response.raise_for_status()
                if b'"error"' in response.content:
                    raise RuntimeError(response.text[:300])

            print(f"centrifugo: pid {proc.pid}", flush=True)
            print(f"centrifugo: GOMAXPROCS={cores}", flush=True)
            print(f"centrifugo: serving on http://127.0.0.1:{port}/", flush=True)
            failed = await peer.drive_until(board, publish, stop)
            if failed is not None:
                print(f"centrifugo: publisher failed: {failed!r}", flush=True)
        return 0
    finally:
        await peer.stop_process(proc)
        log.close()


def _missing() -> str | None:
    if binary() is None:
        return "not built; run loadtest/ensure-peers.sh (go install, a few minutes once)"
    return None


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cores", type=int, default=0, help="GOMAXPROCS (0: every core)")


async def _serve(board: Board, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="oddstream-centrifugo-") as tmp:
        return await run(board, args, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    return peer.main("centrifugo", argv, _serve, arguments=_arguments, unavailable=_missing)


if __name__ == "__main__":
    sys.exit(main())
