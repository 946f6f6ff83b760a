"""The ceiling: the least a Python server can do to push the same deltas to the same
sockets. One uvloop process, bare protocols, the frame (or SSE event) built once per
publish and written to every socket with ``transport.write``: no framework, no per-client
queue, no per-client await. What the kernel and the event loop cost, and nothing else.

    python -m loadtest.ceiling --board /dev/shm/x --port 0

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

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\n\r\n"
)


class Fanout:
    def __init__(self) -> None:
        self.ws: set[asyncio.Transport] = set()
        self.sse: set[asyncio.Transport] = set()


class _Peer(asyncio.Protocol):
    def __init__(self, fanout: Fanout):
        self.fanout = fanout
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

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
            self.fanout.ws.add(self.transport)
        else:
            self.transport.write(_SSE_HEAD)
            self.fanout.sse.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.fanout.ws.discard(self.transport)
            self.fanout.sse.discard(self.transport)


async def serve(board: Board, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    fanout = Fanout()
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
                frame = wsframe.server_frame(payload)
                for t in fanout.ws:
                    t.write(frame)
            if fanout.sse:
                event = b"event: delta\ndata: " + payload + b"\n\n"
                for t in fanout.sse:
                    t.write(event)

    bound = server.sockets[0].getsockname()[1]
    print(f"ceiling: serving on http://127.0.0.1:{bound}/", flush=True)
    try:
        await peer.drive_until(board, publish, stop)
    finally:
        for t in (*fanout.ws, *fanout.sse):
            t.abort()
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    return peer.main("ceiling", argv, serve)


if __name__ == "__main__":
    sys.exit(main())
