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
  benchmark publisher (up to 64 deltas when the window allows) is one HTTP request, up to
  four requests in flight on kept-alive connections, so the publisher is not the bound
  (the report shows the publisher's busy share against its time waiting on a full window,
  and the latency phase's achieved rate against the offered one).

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
_API_CONNECTIONS = 4


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
        # No traffic off this machine: its anonymous usage report is off.
        "usage_stats": {"disabled": True},
    }


def channel(market_id: str) -> str:
    """A market's channel: ``:`` separates Centrifugo's namespaces, so it is replaced."""
    return market_id.replace(":", "_")


def connect_command(markets: list[str]) -> str:
    """What a client sends after the WebSocket handshake: connect, then one subscribe per
    market, newline-delimited in one frame (the JSON protocol allows it)."""
    commands = [{"id": 1, "connect": {}}]
    commands += [{"id": 2 + i, "subscribe": {"channel": channel(m)}} for i, m in enumerate(markets)]
    return "\n".join(json.dumps(c, separators=(",", ":")) for c in commands)


def batch_body(source: DeltaSource, n: int) -> bytes:
    """``n`` publish commands in one server API batch; each delta's bytes are the data."""
    items = []
    for _ in range(n):
        payload = source.next()
        name = channel(source.market).encode()
        items.append(b'{"publish":{"channel":"' + name + b'","data":' + payload + b"}}")
    return b'{"commands":[' + b",".join(items) + b"]}"


class Api:
    """Centrifugo's server HTTP API over a few kept-alive connections: a call waits only
    for a free connection, the reply is read (and checked) in the background, so the
    publisher overlaps its requests instead of waiting one round trip per batch."""

    def __init__(self, port: int, connections: int = _API_CONNECTIONS):
        self.port = port
        self.size = connections
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self.free = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None

    async def open(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def batch(self, body: bytes) -> None:
        if self.error is not None:
            raise self.error
        async with asyncio.timeout(10):
            reader, writer = await self.free.get()
        request = (
            b"POST /api/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        writer.write(request)
        task = asyncio.create_task(self._reply(reader, writer, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> None:
        try:
            async with asyncio.timeout(10):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    # The server closed the kept-alive connection while it was idle (the
                    # clients connecting): once more on a new one.
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200") or b'"error"' in body:
                raise RuntimeError(f"{head[:40]!r} {body[:300]!r}")
            self.free.put_nowait((reader, writer))
        except (OSError, TimeoutError, RuntimeError, asyncio.IncompleteReadError) as exc:
            self.error = exc
            writer.close()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        while not self.free.empty():
            self.free.get_nowait()[1].close()


async def run(board: Board, args: argparse.Namespace, work: Path) -> int:
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
        api = Api(port)
        await api.open()

        async def publish(n: int) -> None:
            await api.batch(batch_body(source, n))

        print(f"centrifugo: GOMAXPROCS={cores}", flush=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            await peer.announce_and_drive("centrifugo", proc.pid, url, board, publish, stop)
        finally:
            api.close()
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
