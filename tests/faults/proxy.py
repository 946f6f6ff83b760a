"""A tiny TCP proxy on 127.0.0.1 in front of one upstream (a gateway), whose links can be
cut, stalled and restored: the network faults a client meets between it and a gateway.

- :meth:`Proxy.cut` closes every current link (both sides see the connection end) and,
  until :meth:`Proxy.restore`, refuses new ones (accepted, then closed at once, like a
  load balancer with no healthy backend).
- :meth:`Proxy.stall` keeps every link open but stops forwarding bytes either way (a
  half-dead path: nothing arrives, nothing is refused); only heartbeats notice it.
- :meth:`Proxy.restore` forwards again, new links included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

_CHUNK = 65_536


class _Link:
    """One client connection and its upstream connection, piped both ways."""

    def __init__(
        self,
        proxy: Proxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: tuple[asyncio.Task[None], ...] = ()
        self.tasks = (
            asyncio.create_task(self._pipe(client[0], upstream[1])),
            asyncio.create_task(self._pipe(upstream[0], client[1])),
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                # While stalled, bytes wait here (and TCP back-pressure does the rest).
                await self.proxy._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close both sides at once (RST where possible: a cut link, not a polite FIN),
        and stop both pipes (one may be waiting out a stall)."""
        for _, writer in (self.client, self.upstream):
            writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy._links.discard(self)

    async def wait_closed(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Proxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to
    ``upstream_host:upstream_port``. Use as an async context manager (see :func:`proxy`)."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self._upstream = (upstream_host, upstream_port)
        self._links: set[_Link] = set()
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def refusing(self) -> bool:
        return self._refusing

    @property
    def links(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.wait_closed() for link in links))
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(5):
                upstream = await asyncio.open_connection(*self._upstream)
        except (OSError, TimeoutError):
            self.refused += 1
            writer.transport.abort()
            return
        if self.refusing:  # Cut while connecting upstream.
            self.refused += 1
            upstream[1].transport.abort()
            writer.transport.abort()
            return
        self.accepted += 1
        self._links.add(_Link(self, (reader, writer), upstream))

    async def cut(self) -> int:
        """Close every current link and refuse new ones until :meth:`restore`; returns
        how many links were cut."""
        self._refusing = True
        self._flowing.set()
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.wait_closed() for link in links))
        self.cuts += 1
        return len(links)

    def stall(self) -> None:
        """Stop forwarding on every link (new links too) without closing anything."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and forward again."""
        self._refusing = False
        self._flowing.set()


@contextlib.asynccontextmanager
async def proxy(upstream_url: str) -> AsyncIterator[Proxy]:
    """A running :class:`Proxy` in front of ``http://host:port``."""
    hostport = upstream_url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    p = Proxy(host, int(port))
    await p.start()
    try:
        yield p
    finally:
        await p.close()
