"""The WebSocket transport: reads commands into the session, writes its outbox.

Liveness: the protocol's heartbeat is server to client only, so a client that sends
nothing at all after subscribing is normal and is never dropped for it. A client that
stops *reading* is: its outbox overflows (closed with 4001) or, when conflation keeps
its outbox small, a write to it stays blocked past ``send_timeout_s`` (closed with 4002).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, CloseCode, ErrorCode, ProtocolError
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
    try:
        # Stopgap until ``subscribe`` carries it: /ws?conflate_ms=N.
        conflate_ms = websocket.query_params.get("conflate_ms")
        if conflate_ms is not None:
            session.conflate(_int(conflate_ms, "conflate_ms"))
    except ProtocolError as exc:
        await gateway.close_session(session)
        await websocket.close(CloseCode.PROTOCOL_VIOLATION, exc.message)
        return
    reader = asyncio.create_task(_read(websocket, session))
    writer = asyncio.create_task(_write(websocket, session, gateway, binary))
    overflow = asyncio.create_task(session.outbox.overflow.wait())
    tasks = (reader, writer, overflow)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if overflow.done():
            gateway.stats.slow_consumer_closes += 1
            await _close_stuck(websocket, writer, gateway, CloseCode.SLOW_CONSUMER)
        elif writer.done() and not writer.cancelled() and writer.result():
            gateway.stats.dead_client_closes += 1
            await _close_stuck(websocket, writer, gateway, CloseCode.HEARTBEAT_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gateway.close_session(session)


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID, f"{name} must be an integer") from None


_REASONS = {
    CloseCode.SLOW_CONSUMER: "too far behind; resume",
    CloseCode.HEARTBEAT_TIMEOUT: "not reading; resume",
}


async def _close_stuck(
    websocket: WebSocket, writer: asyncio.Task[bool], gateway: Gateway, code: CloseCode
) -> None:
    """Close a client that fell too far behind or stopped reading. Its writer may be
    blocked on a full socket, so it is cancelled first; the close frame gets a bounded
    wait, after which the connection is dropped (the client resumes either way)."""
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    with contextlib.suppress(RuntimeError, OSError, TimeoutError):
        async with asyncio.timeout(gateway.settings.close_timeout_s):
            await websocket.close(code, _REASONS[code])


async def _read(websocket: WebSocket, session: Session) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        await session.handle(data)


async def _write(websocket: WebSocket, session: Session, gateway: Gateway, binary: bool) -> bool:
    """Send the outbox until it closes; True when a send stayed blocked past the send
    timeout (the client stopped reading)."""
    outbox = session.outbox
    heartbeat = gateway.settings.heartbeat_s
    send_timeout = gateway.limits.send_timeout_s
    try:
        while True:
            frames = await outbox.take(heartbeat)
            if not frames:
                if outbox.overflowed or outbox.closed:
                    return False
                frames = [gateway.heartbeat()]
            for frame in frames:
                async with asyncio.timeout(send_timeout):
                    if binary:
                        await websocket.send_bytes(frame.msgpack)
                    else:
                        await websocket.send_text(frame.text)
    except TimeoutError:
        return True
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False  # The peer went away; the reader sees the disconnect.
    finally:
        if websocket.application_state is WebSocketState.CONNECTED and outbox.closed:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(CloseCode.GOING_AWAY, "server closing")
