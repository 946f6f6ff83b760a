"""Serving a gateway's app on a socket, with drain on SIGTERM.

The one place the HTTP server underneath is configured and started: streams straight on
the socket (a connection opened by ``GET /sse``: :mod:`server.front`; WebSocket upgrades:
:mod:`server.ws`), everything else through the HTTP server and the ASGI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from server.front import http_protocol
from server.gateway import Gateway
from server.settings import Settings
from server.streams import Streams
from server.ws import websocket_protocol


def server_config(app: Any, settings: Settings, gateway: Gateway | None = None) -> uvicorn.Config:
    """uvicorn's configuration for a gateway app: streams straight on the socket (a
    connection opened by ``GET /sse``: server/front.py; WebSocket upgrades: server/ws.py),
    everything else through uvicorn's HTTP and the ASGI app."""
    if gateway is None:
        return uvicorn.Config(app, ws="none", lifespan="on", log_level="warning")
    streams = Streams(gateway)
    return uvicorn.Config(
        app,
        http=http_protocol(streams),
        ws=websocket_protocol(streams),
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.close_timeout_s) + 1,
    )


async def serve(app: Any, settings: Settings, gateway: Gateway | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT. The socket is bound first so the printed URL
    carries the real port (``--port 0`` picks a free one). The first signal drains the
    gateway (stop accepting, ``reconnect`` every client, close within ``drain_s``) and then
    stops; a second one stops at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: a client that stops reading fills a small kernel
    # buffer quickly, so back-pressure reaches its outbox (conflation, then 4001/4002)
    # within seconds instead of after megabytes of autotuned buffering.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)  # Clients may connect as soon as the URL is printed.
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"oddstream: cannot listen on {settings.host}:{settings.port} (--host/--port): {exc}"
        ) from None
    config = server_config(app, settings, gateway)
    server = _Server(config)
    loop = asyncio.get_running_loop()
    drain: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        for listener in server.servers:
            listener.close()  # Stop accepting; established connections carry on.
        if gateway is not None:
            await gateway.drain(settings.drain_s)
        server.should_exit = True

    def on_signal() -> None:
        if drain:
            server.force_exit = server.should_exit = True
        else:
            drain.append(loop.create_task(drain_then_stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    port = sock.getsockname()[1]
    print(f"oddstream: serving on http://{settings.host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in drain:
            task.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling (drain first) instead of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
