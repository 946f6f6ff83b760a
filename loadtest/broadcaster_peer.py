"""Peer 1: the textbook starlette + encode/broadcaster push server.

What a team would write first: a starlette app on the same uvicorn (websockets-sansio,
uvloop, no compression, no ping) with `broadcaster` (PyPI, the memory backend). Each
WebSocket subscribes to the channel and ``await websocket.send_text`` for every event
(one per-client queue, one await per message per client); SSE is sse-starlette's
``EventSourceResponse`` over the same subscription. The publisher is the benchmark's,
in process, with the very same payloads as oddstream's.

    python -m loadtest.broadcaster_peer --board /dev/shm/x --port 0

Prints ``broadcaster: serving on http://127.0.0.1:PORT/`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from loadtest import peer
from loadtest.board import Board
from loadtest.payloads import DeltaSource, market_ids
from loadtest.publisher import drive

CHANNEL = "odds"


def build(board: Board, markets: int, *, plain: bool = False) -> Any:
    """The app; ``plain``: SSE as a bare ``StreamingResponse`` (a stack candidate)."""
    from broadcaster import Broadcast
    from broadcaster._base import Unsubscribed
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    broadcast = Broadcast("memory://")
    source = DeltaSource(market_ids(markets))

    async def publish(n: int) -> None:
        for _ in range(n):
            await broadcast.publish(CHANNEL, source.next().decode())

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()

        async def drain() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await websocket.receive_text()

        reader = asyncio.create_task(drain())
        try:
            async with broadcast.subscribe(CHANNEL) as subscriber:
                while not reader.done():
                    event = await subscriber.get()
                    await websocket.send_text(event.message)
        except (WebSocketDisconnect, Unsubscribed, RuntimeError, OSError):
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def plain_sse(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            async with broadcast.subscribe(CHANNEL) as subscriber:
                with contextlib.suppress(Unsubscribed):
                    while True:
                        event = await subscriber.get()
                        yield b"event: delta\ndata: " + event.message.encode() + b"\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def sse(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            async with broadcast.subscribe(CHANNEL) as subscriber:
                with contextlib.suppress(Unsubscribed):
                    while True:
                        event = await subscriber.get()
                        yield {"event": "delta", "data": event.message}

        return EventSourceResponse(events())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        feeder = asyncio.create_task(drive(board, publish))
        try:
            yield
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            await broadcast.disconnect()

    routes = [WebSocketRoute("/ws", ws), Route("/sse", plain_sse if plain else sse)]
    return Starlette(routes=routes, lifespan=lifespan)


async def serve(board: Board, args: argparse.Namespace) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)
    config = uvicorn.Config(
        build(board, args.markets, plain=args.sse == "plain"),
        ws="websockets-sansio",
        ws_ping_interval=None,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)  # Handles SIGTERM/SIGINT itself.
    print(f"broadcaster: serving on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    await server.serve(sockets=[sock])


def _missing() -> str | None:
    try:
        import broadcaster  # noqa: F401
    except ImportError:
        return "pip install broadcaster"
    return None


def main(argv: list[str] | None = None) -> int:
    return peer.main(
        "broadcaster",
        argv,
        serve,
        arguments=lambda p: p.add_argument(
            "--sse", choices=("sse-starlette", "plain"), default="sse-starlette"
        ),
        unavailable=_missing,
    )


if __name__ == "__main__":
    sys.exit(main())
