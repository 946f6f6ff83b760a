"""The WebSocket transport: reads commands into the session, writes its outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, CloseCode
from server.gateway import Gateway
from server.session import Session

log = logging.getLogger(__name__)

_SUPPORTED = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)


async def websocket_endpoint(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    offered = websocket.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in _SUPPORTED), None)
    # Refusals happen after the handshake so the client sees a close code it can act on
    # (a refused handshake is only an HTTP 403 to a browser).
    await websocket.accept(subprotocol=chosen)
    if offered and chosen is None:
        reason = "supported subprotocols: " + ", ".join(_SUPPORTED)
        await websocket.close(CloseCode.UNSUPPORTED_SUBPROTOCOL, reason)
        return
    if gateway.draining:
        await websocket.close(CloseCode.GOING_AWAY, "draining; reconnect elsewhere")
        return
    binary = chosen == SUBPROTOCOL_MSGPACK
    session = gateway.open_session()
    reader = asyncio.create_task(_read(websocket, session))
    writer = asyncio.create_task(_write(websocket, session, gateway, binary))
    overflow = asyncio.create_task(session.outbox.overflow.wait())
    tasks = (reader, writer, overflow)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if overflow.done():
            await _close_slow(websocket, writer, gateway)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gateway.close_session(session)


async def _close_slow(websocket: WebSocket, writer: asyncio.Task[None], gateway: Gateway) -> None:
    """Close a client whose outbox overflowed. Its writer may be blocked on a full socket,
    so it is cancelled first; the close frame gets a bounded wait, after which the
    connection is dropped (the client resumes either way)."""
    gateway.stats.slow_consumer_closes += 1
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    with contextlib.suppress(RuntimeError, OSError, TimeoutError):
        async with asyncio.timeout(gateway.settings.close_timeout_s):
            await websocket.close(CloseCode.SLOW_CONSUMER, "too far behind; resume")


async def _read(websocket: WebSocket, session: Session) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        await session.handle(data)


async def _write(websocket: WebSocket, session: Session, gateway: Gateway, binary: bool) -> None:
    outbox = session.outbox
    heartbeat = gateway.settings.heartbeat_s
    try:
        while True:
            frames = await outbox.take(heartbeat)
            if not frames:
                if outbox.overflowed or outbox.closed:
                    return
                frames = [gateway.heartbeat()]
            for frame in frames:
                if binary:
                    await websocket.send_bytes(frame.msgpack)
                else:
                    await websocket.send_text(frame.text)
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # The peer went away; the reader sees the disconnect.
    finally:
        if websocket.application_state is WebSocketState.CONNECTED and outbox.closed:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(CloseCode.GOING_AWAY, "server closing")
