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
from collections.abc import AsyncIterator, Callable
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
    host: str,
    port: int,
    *,
    send_buffer_bytes: int | None = None,
    flags: str,
    shared: bool = False,
    listen: bool = True,
) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port). Accepted sockets inherit
    ``send_buffer_bytes``: a client that stops reading fills a small kernel buffer
    quickly, so back-pressure reaches its outbox (conflation, then 4001/4002) within
    seconds instead of after megabytes of autotuned buffering. ``shared``: the port is
    shared with the other workers of one gateway (``SO_REUSEPORT``: the kernel spreads new
    connections over every listening socket on it); ``listen=False`` only reserves the
    address (a supervisor's, which takes no connections). Exits naming ``flags`` when the
    address cannot be used."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if send_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"oddstream: cannot listen on {host}:{port} ({flags}): {exc}") from None
    return sock


@dataclass(frozen=True)
class Seat:
    """This process is worker ``index`` of a gateway serving one port with several
    processes (``oddstream gateway --workers N``): its public socket shares the port, its
    operator listener is ``--ops-port`` + ``index``, and instead of printing the URLs it
    calls ``ready`` once it listens (the supervisor prints them for all)."""

    index: int
    ready: Callable[[], None]

    def ops_port(self, base: int) -> int:
        return base + self.index if base else 0


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


def announce(settings: Settings, port: int, ops_port: int | None, workers: int = 1) -> None:
    """The lines a gateway prints once it serves (tests and scripts read the first)."""
    alone = "" if workers == 1 else f", {workers} workers"
    url = f"http://{settings.host}:{port}/"
    print(f"oddstream: serving on {url}  (Ctrl-C to stop{alone})", flush=True)
    if ops_port is not None:
        ops = str(ops_port) if workers == 1 else f"{ops_port}-{ops_port + workers - 1}"
        ops_url = f"http://{settings.ops_host}:{ops}/metrics"
        print(f"oddstream: operator endpoints on {ops_url}", flush=True)


async def serve(
    app: ASGIApp, settings: Settings, gateway: Gateway, seat: Seat | None = None
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT. The socket is bound first so the printed URL
    carries the real port (``--port 0`` picks a free one). The first signal drains the
    gateway (stop accepting, ``reconnect`` every client, close within ``drain_s``) and then
    stops; a second one stops at once. ``seat``: one of several workers on the port."""
    sock = bind(
        settings.host,
        settings.port,
        send_buffer_bytes=settings.send_buffer_bytes,
        flags="--host/--port",
        shared=seat is not None,
    )
    ops_port = settings.ops_port if seat is None else seat.ops_port(settings.ops_port)
    ops_sock = (
        bind(settings.ops_host, ops_port, flags="--ops-host/--ops-port") if ops_port else None
    )
    loop = asyncio.get_running_loop()
    signals: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    def on_signal() -> None:
        (signals[1] if signals[0].is_set() else signals[0]).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with listening(app, settings, gateway, sock, ops_sock) as node:
            if seat is not None:
                seat.ready()
            else:
                announce(settings, node.port, node.ops_port)
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
