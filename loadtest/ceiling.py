"""The ceilings: the least a Python server can do to push the same deltas to the same
sockets. One uvloop process, bare protocols, the frame (or SSE event) built once per
publish; no framework, no per-client await. What the kernel and the event loop cost, and
nothing else. Two ways to write:

* per frame (the default): each frame is written to every socket with its own
  ``transport.write`` at once;
* ``--join``: the gateway's write rule (``server/streams.py``, ``server/outbox.py``)
  without anything else of the gateway: a publish appends the frame to each client's
  queue and marks the client dirty; one flush per event-loop turn (or ``--coalesce-ms``
  after the first wake, like the gateway's ``coalesce_ms``) writes, for every dirty
  client, at most :data:`server.outbox.BATCH` queued frames joined in one ``write``, and
  leaves the rest for the next flush; nothing is taken while a socket's buffer is full
  (the transport paused writing), and ``resume_writing`` marks the client dirty again.
  This is the fair reference for the gateway, which joins a client's frames the same way.

    python -m loadtest.ceiling --board /dev/shm/x --port 0 [--join [--coalesce-ms N]]

Answers ``GET /ws`` (any path with ``Upgrade: websocket``) with a WebSocket and any other
GET with an SSE stream; client frames are read and ignored. Prints
``serving on http://127.0.0.1:PORT/`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import cast

from loadtest import peer, wsframe
from loadtest.board import H_PACK, Board
from loadtest.payloads import DeltaSource, market_ids
from server.outbox import BATCH

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\n\r\n"
)


class Fanout:
    """Every client, and the joining flush when ``--join``."""

    def __init__(self, join: bool = False, window_s: float = 0.0):
        self.ws: set[_Peer] = set()
        self.sse: set[_Peer] = set()
        self.join = join
        self.window_s = window_s
        self._dirty: list[_Peer] = []
        self._scheduled = False

    def send(self, clients: set[_Peer], data: bytes) -> None:
        if not self.join:
            for c in clients:
                c.transport.write(data)  # type: ignore[union-attr]
            return
        for c in clients:
            c.queue.append(data)
            if len(c.queue) == 1:
                self.wake(c)

    def wake(self, client: _Peer) -> None:
        if client.dirty or client.paused:
            return
        client.dirty = True
        self._dirty.append(client)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self.window_s:
                loop.call_later(self.window_s, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for c in dirty:
            c.dirty = False
            if c.paused or c.transport is None or c.transport.is_closing():
                continue
            queue = c.queue
            if len(queue) <= BATCH:
                c.transport.write(b"".join(queue))
                queue.clear()
            else:
                c.transport.write(b"".join(queue[:BATCH]))
                del queue[:BATCH]
                self.wake(c)  # More than one batch: the rest with the next flush.


class _Peer(asyncio.Protocol):
    def __init__(self, fanout: Fanout):
        self.fanout = fanout
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.done = False
        self.queue: list[bytes] = []
        self.dirty = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.queue:
            self.fanout.wake(self)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # Client frames (the subscribe command) are ignored.
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 16384 and self.transport is not None:
                self.transport.abort()
            return
        assert self.transport is not None
        self.done = True
        lines = self.head[:end].split(b"\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])
        }
        if headers.get(b"upgrade", b"").lower() == b"websocket":
            key = headers.get(b"sec-websocket-key", b"")
            reply = [
                b"HTTP/1.1 101 Switching Protocols",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Accept: " + wsframe.accept_key(key),
            ]
            proto = headers.get(b"sec-websocket-protocol")
            if proto:
                reply.append(b"Sec-WebSocket-Protocol: " + proto.split(b",")[0].strip())
            self.transport.write(b"\r\n".join(reply) + b"\r\n\r\n")
            self.fanout.ws.add(self)
        else:
            self.transport.write(_SSE_HEAD)
            self.fanout.sse.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fanout.ws.discard(self)
        self.fanout.sse.discard(self)
        self.queue.clear()


async def serve(board: Board, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    fanout = Fanout(args.join, args.coalesce_ms / 1000)
    source = DeltaSource(market_ids(args.markets))
    server = await loop.create_server(
        lambda: _Peer(fanout), "127.0.0.1", args.port, backlog=4096, reuse_address=True
    )
    stop = peer.stop_on_signals()

    async def publish(n: int) -> None:
        pack = board.get(H_PACK)
        for _ in range(n):
            payload = source.packed(pack) if pack > 1 else source.next()
            if fanout.ws:
                fanout.send(fanout.ws, wsframe.server_frame(payload))
            if fanout.sse:
                fanout.send(fanout.sse, b"event: delta\ndata: " + payload + b"\n\n")

    bound = server.sockets[0].getsockname()[1]
    name = "ceiling_joining" if args.join else "ceiling"
    print(f"{name}: serving on http://127.0.0.1:{bound}/", flush=True)
    try:
        await peer.drive_until(board, publish, stop)
    finally:
        for c in (*fanout.ws, *fanout.sse):
            if c.transport is not None:
                c.transport.abort()
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--join", action="store_true", help="join queued frames as the gateway")
    parser.add_argument("--coalesce-ms", type=float, default=0.0, help="with --join: the window")


def main(argv: list[str] | None = None) -> int:
    return peer.main("ceiling", argv, serve, arguments=_arguments)


if __name__ == "__main__":
    sys.exit(main())
