"""Serving a gateway: its listeners, the app's lifespan, and drain on SIGTERM.

The public listener serves every client connection through the edge
(:mod:`server.listener`: WebSocket, SSE and HTTP decided in one place, after
:mod:`server.admission`); the operator listener (``--ops-host``/``--ops-port``) serves
``/metrics``, ``/healthz`` and ``/readyz`` to operators only. No third-party server is
involved: asyncio (uvloop under the CLI), ``h11`` and ``websockets``' sans-I/O protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.admission import Admission
from server.app import ops_app
from server.gateway import Gateway
from server.listener import ASGIApp, Edge, EdgeConnection, Lifespan
from server.settings import Settings
from server.streams import Streams

#: Connections waiting to be accepted (clients may connect as soon as the URL is printed).
BACKLOG = 2048


def bind(
    host: str, port: int, *, send_buffer_bytes: int | None = None, flags: str
) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port). Accepted sockets inherit
    ``send_buffer_bytes``: a client that stops reading fills a small kernel buffer
    quickly, so back-pressure reaches its outbox (conflation, then 4001/4002) within
    seconds instead of after megabytes of autotuned buffering. Exits naming ``flags``
    when the address cannot be used."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"oddstream: cannot listen on {host}:{port} ({flags}): {exc}") from None
    return sock


@dataclass
class Listening:
    """The running listeners of one gateway (see :func:`listening`)."""

    port: int
    ops_port: int | None
    admission: Admission
    servers: list[asyncio.Server]
    #: How long closing waits for the connections to go (0: a second signal).
    linger_s: float = 0.0

    def stop_accepting(self) -> None:
        """Close the public listener; established connections carry on."""
        self.servers[0].close()


@contextlib.asynccontextmanager
async def listening(
    app: ASGIApp,
    settings: Settings,
    gateway: Gateway,
    sock: socket.socket,
    ops_sock: socket.socket | None = None,
) -> AsyncIterator[Listening]:
    """Serve ``app`` and the gateway's streams on ``sock``, and the operator endpoints on
    ``ops_sock``, between the app's lifespan startup and shutdown. On exit every
    connection is closed (streams with "reconnect and resume"), waiting at most
    :attr:`Listening.linger_s` for them to go."""
    admission = Admission(settings)
    streams = Streams(gateway)
    public = Edge(app, settings, streams, admission)
    ops = Edge(ops_app(gateway, admission, streams), settings)
    lifespan = Lifespan(app)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    node: Listening | None = None
    await lifespan.startup()
    try:
        servers.append(await loop.create_server(lambda: EdgeConnection(public), sock=sock))
        if ops_sock is not None:
            servers.append(await loop.create_server(lambda: EdgeConnection(ops), sock=ops_sock))
        node = Listening(
            port=sock.getsockname()[1],
            ops_port=None if ops_sock is None else ops_sock.getsockname()[1],
            admission=admission,
            servers=servers,
            linger_s=settings.close_timeout_s + 1,
        )
        yield node
    finally:
        for server in servers:
            server.close()
        for edge in (public, ops):
            edge.shutdown()
        streams.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(node.linger_s if node is not None else 0):
                await admission.wait_idle()
        await lifespan.shutdown()


async def serve(app: ASGIApp, settings: Settings, gateway: Gateway) -> None:
    """Serve ``app`` until SIGTERM/SIGINT. The socket is bound first so the printed URL
    carries the real port (``--port 0`` picks a free one). The first signal drains the
    gateway (stop accepting, ``reconnect`` every client, close within ``drain_s``) and then
    stops; a second one stops at once."""
    sock = bind(
        settings.host,
        settings.port,
        send_buffer_bytes=settings.send_buffer_bytes,
        flags="--host/--port",
    )
    ops_sock = (
        bind(settings.ops_host, settings.ops_port, flags="--ops-host/--ops-port")
        if settings.ops_port
        else None
    )
    loop = asyncio.get_running_loop()
    signals: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    def on_signal() -> None:
        (signals[1] if signals[0].is_set() else signals[0]).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with listening(app, settings, gateway, sock, ops_sock) as node:
            print(
                f"oddstream: serving on http://{settings.host}:{node.port}/  (Ctrl-C to stop)",
                flush=True,
            )
            if node.ops_port is not None:
                print(
                    f"oddstream: operator endpoints on http://{settings.ops_host}:{node.ops_port}"
                    "/metrics",
                    flush=True,
                )
            await signals[0].wait()
            node.stop_accepting()
            drain = asyncio.ensure_future(gateway.drain(settings.drain_s))
            forced = asyncio.ensure_future(signals[1].wait())
            try:
                await asyncio.wait((drain, forced), return_when=asyncio.FIRST_COMPLETED)
            finally:
                drain.cancel()
                forced.cancel()
            if signals[1].is_set():
                node.linger_s = 0  # A second signal: stop at once.
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
