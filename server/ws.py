"""The WebSocket transport, written straight on the socket.

uvicorn parses the HTTP request and hands every upgrade to :class:`WebSocketConnection`
(its ``ws`` protocol class, see :func:`websocket_protocol`); from there no ASGI, no task
per connection and no await per frame are involved:

* the handshake and the client's frames go through the sans-I/O
  :class:`websockets.server.ServerProtocol` (validation, subprotocol, ping/pong, close
  handshake, ``max_frame_bytes``);
* frames *to* the client are the shared, pre-framed bytes of each message
  (:attr:`channels.frame.Frame.ws_text`, made once for all clients). Fan-out only puts a
  frame in the client's :class:`~server.outbox.Outbox` and marks the connection dirty;
  :class:`WebSockets` flushes every dirty connection once per event-loop turn (or after
  ``coalesce_ms``), writing all its queued frames in one ``write`` — per-client write
  coalescing, one system call however many deltas arrived in the turn;
* while the kernel buffer of a client is full (the transport paused writing), nothing is
  taken from its outbox, so the backlog stays where it can be conflated.

Liveness: the protocol's heartbeat is server to client only, so a client that sends
nothing at all after subscribing is normal and is never dropped for it. A client that
stops *reading* is: its outbox overflows (closed with 4001) or, when conflation keeps
its outbox small, its socket stays unwritable past ``send_timeout_s`` (closed with 4002).
A connection with nothing to send for a heartbeat interval gets a ``heartbeat``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from channels.frame import OP_BINARY, OP_TEXT, Frame, ws_frame
from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, CloseCode, ErrorCode, ProtocolError
from server.gateway import Gateway
from server.session import Session

log = logging.getLogger(__name__)

_SUPPORTED = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)
PATH = "/ws"
_DATA = (Opcode.TEXT, Opcode.BINARY)
#: Commands queued from one client before its socket stops being read (back-pressure).
_COMMANDS_QUEUED = 64

_REASONS = {
    CloseCode.SLOW_CONSUMER: "too far behind; resume",
    CloseCode.HEARTBEAT_TIMEOUT: "not reading; resume",
}


def websocket_protocol(gateway: Gateway) -> Any:
    """The ``ws`` protocol class to give uvicorn: it builds one connection per upgrade,
    all sharing this gateway's :class:`WebSockets` (a factory where uvicorn's types say
    class: it only ever calls it with keyword arguments)."""
    sockets = WebSockets(gateway)

    def build(
        config: Any = None, server_state: Any = None, app_state: Any = None, _loop: Any = None
    ) -> WebSocketConnection:
        return WebSocketConnection(sockets, server_state)

    return build


def _select_subprotocol(protocol: ServerProtocol, offered: Any) -> Any:
    # Refusals happen after the handshake so the client sees a close code it can act on
    # (a refused handshake is only an HTTP error to a browser): no match, no subprotocol.
    return next((p for p in offered if p in _SUPPORTED), None)


class WebSockets:
    """The node's WebSocket connections: the flush of dirty ones and the heartbeat."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.connections: set[WebSocketConnection] = set()
        self._dirty: list[WebSocketConnection] = []
        self._scheduled = False
        self._window_s = gateway.settings.coalesce_ms / 1000
        self._heartbeat: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def wake(self, conn: WebSocketConnection) -> None:
        """``conn`` has frames to write: flush it in this turn's flush."""
        if conn.dirty:
            return
        conn.dirty = True
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._window_s:
                loop.call_later(self._window_s, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        now = asyncio.get_running_loop().time()
        for conn in dirty:
            conn.dirty = False
            conn.flush(now)

    def add(self, conn: WebSocketConnection) -> None:
        self.connections.add(conn)
        if self._heartbeat is None:
            self._schedule_heartbeat()

    def remove(self, conn: WebSocketConnection) -> None:
        self.connections.discard(conn)

    def close_session(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self.gateway.close_session(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.gateway.settings.heartbeat_s / 4, self._beat)

    def _beat(self) -> None:
        """Every connection that sent nothing for a heartbeat interval gets a heartbeat
        (one frame, encoded once, shared). Checked every quarter interval, so a quiet
        client hears from the server at least every 1.25 intervals."""
        frame: Frame | None = None
        quiet_since = asyncio.get_running_loop().time() - self.gateway.settings.heartbeat_s
        for conn in self.connections:
            if conn.sent_at <= quiet_since and conn.session is not None:
                frame = frame or self.gateway.heartbeat()
                conn.session.offer(frame)
        if self.connections:
            self._schedule_heartbeat()
        else:
            self._heartbeat = None


class WebSocketConnection(asyncio.Protocol):
    """One client: handshake, commands in, the outbox out (see the module doc)."""

    def __init__(self, sockets: WebSockets, server_state: Any = None):
        self._sockets = sockets
        self._gateway = sockets.gateway
        self._server_state = server_state
        settings = self._gateway.settings
        self._ws = ServerProtocol(
            subprotocols=[Subprotocol(p) for p in _SUPPORTED],
            select_subprotocol=_select_subprotocol,
            max_size=settings.max_frame_bytes,
        )
        self._transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._binary = False
        self._batch = False
        self.dirty = False
        self.sent_at = asyncio.get_running_loop().time()
        self._paused = False
        self._closing = False
        self._stuck: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._commands: collections.deque[bytes] = collections.deque()
        self._runner: asyncio.Task[None] | None = None
        self._reading = True

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self._transport = cast(asyncio.Transport, transport)
        if self._server_state is not None:
            self._server_state.connections.add(self)
        self._sockets.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, WsFrame) and event.opcode in _DATA:
                self._command(bytes(event.data))
        self._send_pending()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._send_pending()
        return None

    def pause_writing(self) -> None:
        self._paused = True
        if self._stuck is None and self.session is not None:
            loop = asyncio.get_running_loop()
            timeout = self._gateway.limits.send_timeout_s
            self._stuck = loop.call_later(timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._paused = False
        if self._stuck is not None:
            self._stuck.cancel()
            self._stuck = None
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._server_state is not None:
            self._server_state.connections.discard(self)
        self._sockets.remove(self)
        for timer in (self._stuck, self._timer, self._abort):
            if timer is not None:
                timer.cancel()
        if self._runner is not None:
            self._runner.cancel()
        self._closing = True
        if self.session is not None:
            self._sockets.close_session(self.session)

    def shutdown(self) -> None:
        """uvicorn's server is stopping (after our drain): close what is left."""
        self._close(CloseCode.GOING_AWAY, "server closing")

    # -- handshake --------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        url = urlsplit(request.path)
        if url.path != PATH:
            ws.send_response(ws.reject(404, "Not Found\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        if ws.state is not State.OPEN:
            return  # Refused by the handshake rules (400, 426); the response says why.
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        chosen = response.headers.get("Sec-WebSocket-Protocol")
        if offered and chosen is None:
            self._close(
                CloseCode.UNSUPPORTED_SUBPROTOCOL,
                "supported subprotocols: " + ", ".join(_SUPPORTED),
            )
            return
        gateway = self._gateway
        if gateway.draining:
            self._close(CloseCode.GOING_AWAY, "draining; reconnect elsewhere")
            return
        self._binary = chosen == SUBPROTOCOL_MSGPACK
        query = parse_qs(url.query)
        batch = query.get("batch", ["0"])[-1]
        if batch not in ("0", "1"):
            self._close(CloseCode.PROTOCOL_VIOLATION, "batch must be 0 or 1")
            return
        self._batch = batch == "1"
        session = gateway.open_session(waker=self.wake)
        self.session = session
        # Stopgap until ``subscribe`` carries it: /ws?conflate_ms=N.
        conflate_ms = query.get("conflate_ms")
        if conflate_ms:
            try:
                session.conflate(_int(conflate_ms[-1], "conflate_ms"))
            except ProtocolError as exc:
                self._close(CloseCode.PROTOCOL_VIOLATION, exc.message)

    # -- commands ---------------------------------------------------------------------------

    def _command(self, data: bytes) -> None:
        if self.session is None or self._closing:
            return
        self._commands.append(data)
        if len(self._commands) >= _COMMANDS_QUEUED and self._reading and self._transport:
            self._reading = False
            self._transport.pause_reading()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_commands())

    async def _run_commands(self) -> None:
        """Commands run one at a time, in order (a subscribe may wait on storage)."""
        session = self.session
        assert session is not None
        commands = self._commands
        try:
            while commands:
                await session.handle(commands.popleft())
                if not self._reading and len(commands) < _COMMANDS_QUEUED // 2:
                    self._reading = True
                    if self._transport is not None and not self._closing:
                        self._transport.resume_reading()
        finally:
            self._runner = None

    # -- writing ----------------------------------------------------------------------------

    def wake(self) -> None:
        """The outbox has something (or changed state): flush in this turn's flush."""
        if not self._closing:
            self._sockets.wake(self)

    def flush(self, now: float) -> None:
        """Write everything the outbox lets go now (up to a batch), in one write."""
        session = self.session
        if self._closing or session is None:
            return
        outbox = session.outbox
        if outbox.overflowed:
            self._gateway.stats.slow_consumer_closes += 1
            self._close(CloseCode.SLOW_CONSUMER, _REASONS[CloseCode.SLOW_CONSUMER])
            return
        if self._paused:
            return  # resume_writing wakes us; the backlog conflates in the outbox.
        frames = outbox.take_now()
        if frames:
            transport = self._transport
            assert transport is not None
            if self._batch:
                transport.write(batch_frame(frames, binary=self._binary))
            elif self._binary:
                transport.write(b"".join([f.ws_binary for f in frames]))
            else:
                transport.write(b"".join([f.ws_text for f in frames]))
            self.sent_at = now
            stats = self._gateway.stats
            stats.ws_writes += 1
            stats.ws_messages += len(frames)
        if outbox.closed:
            self._close(CloseCode.GOING_AWAY, "server closing")
            return
        due = outbox.due_s()
        if due is None:
            return
        if due == 0:
            self.wake()  # More than one batch: the rest in the next turn.
        elif self._timer is None or self._timer.cancelled():
            self._timer = asyncio.get_running_loop().call_later(due, self._due)

    def _due(self) -> None:
        self._timer = None
        self.wake()

    def _not_reading(self) -> None:
        """The socket stayed unwritable past the send timeout: the client is gone or
        stopped reading."""
        self._stuck = None
        if not self._closing:
            self._gateway.stats.dead_client_closes += 1
            self._close(CloseCode.HEARTBEAT_TIMEOUT, _REASONS[CloseCode.HEARTBEAT_TIMEOUT])

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the connection is dropped if the client does not
        answer within ``close_timeout_s`` (it resumes either way)."""
        if self._closing or self._transport is None:
            return
        self._closing = True
        if self.session is not None:
            self.session.outbox.close()
        if self._ws.state is State.OPEN:
            self._ws.send_close(code, reason)
        self._send_pending()
        if not self._transport.is_closing():
            loop = asyncio.get_running_loop()
            self._abort = loop.call_later(
                self._gateway.settings.close_timeout_s, self._transport.abort
            )

    def _send_pending(self) -> None:
        """Write what the protocol has to say (handshake, pong, close) and close the
        socket when it says so."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()  # The protocol's end of stream: flushes, then closes.
                return


def batch_frame(frames: list[Frame], *, binary: bool) -> bytes:
    """One WebSocket message holding ``frames`` as an array (``?batch=1``): JSON
    ``[m1,m2,...]`` from the shared encodings, or a MessagePack array of them."""
    if binary:
        n = len(frames)
        head = bytes((0x90 | n,)) if n < 16 else struct.pack("!BH", 0xDC, n)
        return ws_frame(OP_BINARY, head + b"".join([f.msgpack for f in frames]))
    return ws_frame(OP_TEXT, b"[" + b",".join([f.json for f in frames]) + b"]")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID, f"{name} must be an integer") from None
