"""Peer 2: Pushpin (Debian package ``pushpin``), the GRIP proxy, fanning out the same
messages to the same clients.

This process runs Pushpin with a throw-away configuration (a temporary directory;
every port on 127.0.0.1, chosen free), a small GRIP origin behind it, and the benchmark
publisher, which publishes each delta through Pushpin's HTTP publish API
(``POST /publish/``) with both a ``ws-message`` and an ``http-stream`` format:

* WebSocket clients reach the origin through WebSocket-over-HTTP; on ``OPEN`` the origin
  subscribes the connection to the channel with a GRIP control message.
* SSE clients get a ``Grip-Hold: stream`` response on the channel.

Pushpin's delivery rate limiter (``message_rate``: 2500 deliveries/s by default) is
turned off (``message_rate=0``), so the run measures Pushpin's fan-out, not its throttle;
in 1.36 large values (1e6, 1e7) make the limiter stall deliveries altogether. The rest is
Debian's default configuration.

    python -m loadtest.pushpin_peer --board /dev/shm/x --port 0

Prints ``pushpin: serving on http://127.0.0.1:PORT/`` and ``pushpin: pid N`` (the
Pushpin runner, whose process tree the benchmark measures), or ``pushpin: not available
(why)`` and exits 3 when Pushpin is not installed or does not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import peer, procs
from loadtest.board import Board
from loadtest.payloads import DeltaSource, market_ids
from loadtest.peer import free_port, wait_port

CHANNEL = "odds"
_START_TIMEOUT_S = 20.0


def config(run: Path, http_port: int, push_port: int, zmq_ports: list[int]) -> str:
    pull, sub, command = zmq_ports
    return f"""[global]
include={{libdir}}/internal.conf
rundir={run}/run
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{http_port}
logdir={run}/log
log_level=1
client_buffer_size=8192
client_maxconn=50000
allow_compression=false
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
updates_check=off
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out

[handler]
push_in_spec=tcp://127.0.0.1:{pull}
push_in_sub_specs=tcp://127.0.0.1:{sub}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={push_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=10000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:{command}
message_rate=0
message_hwm=0
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""


# -- the GRIP origin ----------------------------------------------------------------------------


def ws_events(body: bytes) -> list[tuple[str, bytes]]:
    """Decode a WebSocket-over-HTTP body: ``TYPE[ HEXLEN]\\r\\n[CONTENT\\r\\n]`` items."""
    out = []
    i = 0
    while i < len(body):
        eol = body.find(b"\r\n", i)
        if eol < 0:
            break
        kind, _, size = body[i:eol].partition(b" ")
        i = eol + 2
        content = b""
        if size:
            n = int(size, 16)
            content = body[i : i + n]
            i += n + 2
        out.append((kind.decode(), content))
    return out


def ws_event(kind: str, content: bytes | None = None) -> bytes:
    if content is None:
        return kind.encode() + b"\r\n"
    return f"{kind} {len(content):x}\r\n".encode() + content + b"\r\n"


def origin_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    subscribe = b"c:" + json.dumps({"type": "subscribe", "channel": CHANNEL}).encode()

    async def handle(request: Request) -> Response:
        if request.method == "POST" and "websocket-events" in request.headers.get(
            "content-type", ""
        ):
            reply = b""
            for kind, _content in ws_events(await request.body()):
                if kind == "OPEN":
                    reply += ws_event("OPEN") + ws_event("TEXT", subscribe)
                elif kind == "CLOSE":
                    reply += ws_event("CLOSE", b"\x03\xe8")
            return Response(
                reply,
                media_type="application/websocket-events",
                headers={"Sec-WebSocket-Extensions": "grip"},
            )
        # Anything else is an SSE stream held on the channel.
        return Response(
            b"",
            media_type="text/event-stream",
            headers={"Grip-Hold": "stream", "Grip-Channel": CHANNEL, "Cache-Control": "no-store"},
        )

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


async def run(board: Board, args: argparse.Namespace, work: Path) -> int:
    import httpx

    origin_port = free_port()
    http_port = args.port or free_port()
    push_port = free_port()
    zmq_ports = [free_port() for _ in range(3)]
    (work / "run").mkdir()
    (work / "log").mkdir()
    (work / "routes").write_text(f"* 127.0.0.1:{origin_port},over_http\n")
    (work / "pushpin.conf").write_text(config(work, http_port, push_port, zmq_ports))

    log = (work / "pushpin.log").open("wb")
    # The origin in its own process: in this one, the publisher saturating the event loop
    # starved it, and Pushpin answered the handshakes and the clients' frames it forwards
    # with 502 "Error while proxying to origin" and closed those clients.
    origin = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "loadtest.pushpin_peer:origin_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(origin_port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "off",
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=procs.ROOT,
    )
    proc = await asyncio.create_subprocess_exec(
        shutil.which("pushpin") or "pushpin",
        "--config",
        str(work / "pushpin.conf"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    stop = peer.stop_on_signals()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        ready = await wait_port(origin_port, deadline)
        ready = ready and await wait_port(http_port, deadline)
        ready = ready and await wait_port(push_port, deadline)
        if not ready or proc.returncode is not None:
            tail = (work / "pushpin.log").read_text(errors="replace")[-600:]
            print(f"pushpin: not available (did not start: {tail!r})", flush=True)
            return 3
        source = DeltaSource(market_ids(args.markets))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push_port}") as http:

            async def publish(n: int) -> None:
                items = []
                for _ in range(n):
                    text = source.next().decode()
                    items.append(
                        {
                            "channel": CHANNEL,
                            "formats": {
                                "ws-message": {"content": text},
                                "http-stream": {"content": f"event: delta\ndata: {text}\n\n"},
                            },
                        }
                    )
                response = await http.post("/publish/", json={"items": items}, timeout=10)
                response.raise_for_status()

            url = f"http://127.0.0.1:{http_port}/"
            await peer.announce_and_drive("pushpin", proc.pid, url, board, publish, stop)
        return 0
    finally:
        await peer.stop_process(proc)
        await peer.stop_process(origin)
        log.close()


def _missing() -> str | None:
    missing = [b for b in ("pushpin", "condure", "zurl") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed; run loadtest/ensure-peers.sh"
    return None


async def _serve(board: Board, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="oddstream-pushpin-") as tmp:
        return await run(board, args, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    return peer.main("pushpin", argv, _serve, unavailable=_missing)


if __name__ == "__main__":
    sys.exit(main())
