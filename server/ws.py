"""The WebSocket transport, written straight on the socket.

The edge (:mod:`server.listener`) hands every ``/ws`` upgrade, Origin checked, to
:class:`WebSocketConnection` with the request head; from there no ASGI, no task per
connection and no await per frame are involved:

* the handshake and the client's frames go through the sans-I/O
  :class:`websockets.server.ServerProtocol` (validation, subprotocol, ping/pong, close
  handshake, ``max_frame_bytes`` per message); a fragmented message is reassembled here
  before it is a command, a text message that is not UTF-8 fails the connection with
  1007, and a refused ``Sec-WebSocket-Version`` is answered with the one we speak (13);
* frames *to* the client are the shared, pre-framed bytes of each message
  (:attr:`channels.frame.Frame.ws_text`, made once for all clients), written by the
  coalescing flush of :mod:`server.streams` (one write per client per event-loop turn);
  with ``?batch=1`` one WebSocket message carries them all as an array.

Liveness: a client that sends no command within ``idle_timeout_s`` of its handshake is
closed with 1008. The protocol's heartbeat is server to client only, so a client that
sends nothing after its first command is normal and is never dropped for it. A client
that stops *reading* is: its outbox overflows (closed with 4001) or, when conflation
keeps its outbox small, its socket stays unwritable past ``send_timeout_s`` (closed with
4002).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import InvalidHeader
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from channels.frame import OP_BINARY, OP_TEXT, Frame, ws_frame
from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, CloseCode, ProtocolError
from server.admission import Ticket
from server.rest import query_int
from server.session import ConnectionInfo
from server.streams import REASONS, StreamConnection, Streams

log = logging.getLogger(__name__)

_SUPPORTED = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)
PATH = "/ws"
#: The WebSocket version this server speaks (RFC 6455), named in a refused handshake.
VERSION = "13"
#: Commands queued from one client before its socket stops being read (back-pressure).
_COMMANDS_QUEUED = 64
#: Standard close codes (RFC 6455): text that is not UTF-8; a policy violation (no
#: command within ``idle_timeout_s``).
INVALID_DATA = 1007
POLICY_VIOLATION = 1008


def _select_subprotocol(protocol: ServerProtocol, offered: Any) -> Any:
    # Refusals happen after the handshake so the client sees a close code it can act on
    # (a refused handshake is only an HTTP error to a browser): no match, no subprotocol.
    return next((p for p in offered if p in _SUPPORTED), None)


class WebSocketConnection(StreamConnection):
    """One client: handshake, commands in, the outbox out (see the module doc)."""

    def __init__(self, streams: Streams, ticket: Ticket | None = None):
        super().__init__(streams, ticket)
        self._ws = ServerProtocol(
            subprotocols=[Subprotocol(p) for p in _SUPPORTED],
            select_subprotocol=_select_subprotocol,
            max_size=self.gateway.settings.max_frame_bytes,
        )
        self._binary = False
        self._batch = False
        self._commands: collections.deque[bytes] | None = None  # Made on the first command.
        self._runner: asyncio.Task[None] | None = None
        self._reading = True
        self._fragments: list[bytes] | None = None  # A message still being received.
        self._text = False
        self._idle: asyncio.TimerHandle | None = None  # Until the first command.

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, WsFrame):
                self._frame(event)
        self._send_pending()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._send_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._runner is not None:
            self._runner.cancel()
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    # -- handshake --------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        url = urlsplit(request.path)  # The edge hands over requests for PATH only.
        response = ws.accept(request)
        refused = ws.handshake_exc
        if isinstance(refused, InvalidHeader) and refused.name == "Sec-WebSocket-Version":
            response.headers["Sec-WebSocket-Version"] = VERSION  # RFC 6455, 4.4.
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
        gateway = self.gateway
        if gateway.draining:
            self._close(CloseCode.GOING_AWAY, "draining; reconnect elsewhere")
            return
        self._binary = chosen == SUBPROTOCOL_MSGPACK
        self.kind = ("ws", "msgpack" if self._binary else "json")
        query = parse_qs(url.query)
        batch = query.get("batch", ["0"])[-1]
        if batch not in ("0", "1"):
            self._close(CloseCode.PROTOCOL_VIOLATION, "batch must be 0 or 1")
            return
        self._batch = batch == "1"
        # Credentials before the first command (docs/auth.md): an ``Authorization`` header
        # (non-browser clients) or an ``oddstream.token.<jwt>`` entry among the offered
        # subprotocols (browsers cannot set headers); never the URL.
        info = ConnectionInfo(
            authorization=request.headers.get("Authorization"),
            subprotocols=tuple(p.strip() for v in offered for p in v.split(",") if p.strip()),
            origin=request.headers.get("Origin"),
        )
        session = gateway.open_session(waker=self.wake, info=info)
        self.session = session
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(gateway.settings.idle_timeout_s, self._no_command)
        # A connection-wide default for clients that cannot send it on ``subscribe``:
        # /ws?conflate_ms=N (bounded like every query parameter).
        if "conflate_ms" in query:
            try:
                conflate_ms = query_int({"conflate_ms": query["conflate_ms"][-1]}, "conflate_ms")
                if conflate_ms is not None:
                    session.conflate(conflate_ms)
            except ProtocolError as exc:
                self._close(CloseCode.PROTOCOL_VIOLATION, exc.message)

    def _no_command(self) -> None:
        self._idle = None
        self.gateway.stats.protocol_errors += 1
        self._close(POLICY_VIOLATION, "no command within the idle timeout")

    # -- commands ---------------------------------------------------------------------------

    def _frame(self, frame: WsFrame) -> None:
        """Data frames make messages: a fragmented one is joined (the protocol bounds its
        size and checks the sequence of opcodes), a text one must be UTF-8."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                return
            data = bytes(frame.data)
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            data, self._fragments = b"".join(self._fragments), None
        else:
            return  # Control frames: the protocol answers them.
        if self._text:
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                self.gateway.stats.protocol_errors += 1
                self._ws.fail(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                self.closing = True
                self.release()
                return
        self._command(data)

    def _command(self, data: bytes) -> None:
        if self.session is None or self.closing:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._commands is None:
            self._commands = collections.deque()
        self._commands.append(data)
        if len(self._commands) >= _COMMANDS_QUEUED and self._reading and self.transport:
            self._reading = False
            self.transport.pause_reading()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_commands())

    async def _run_commands(self) -> None:
        """Commands run one at a time, in order (a subscribe may wait on storage)."""
        commands = self._commands
        assert commands is not None
        try:
            while commands:
                await self.handle(commands.popleft())
                if not self._reading and len(commands) < _COMMANDS_QUEUED // 2:
                    self._reading = True
                    if self.transport is not None and not self.closing:
                        self.transport.resume_reading()
        finally:
            self._runner = None
            self._commands = None  # Idle connections hold no queue.

    async def handle(self, data: bytes) -> None:
        """Run one client message (the session's command; a subclass speaking another
        protocol over the same connection handling overrides it)."""
        assert self.session is not None
        await self.session.handle(data)

    # -- writing ----------------------------------------------------------------------------

    def write(self, frames: list[Frame]) -> None:
        transport = self.transport
        assert transport is not None
        if self._batch:
            transport.write(batch_frame(frames, binary=self._binary))
        elif self._binary:
            transport.write(b"".join([f.ws_binary for f in frames]))
        else:
            transport.write(b"".join([f.ws_text for f in frames]))
        stats = self.gateway.stats
        stats.ws_writes += 1
        stats.ws_messages += len(frames)

    def end(self, code: CloseCode) -> None:
        self._close(code, REASONS[code])

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the connection is dropped if the client does not
        answer within ``close_timeout_s`` (it resumes either way)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.release()
        if self._ws.state is State.OPEN:
            self._ws.send_close(code, reason)
        self._send_pending()
        if not self.transport.is_closing():
            self.abort_later()

    def _send_pending(self) -> None:
        """Write what the protocol has to say (handshake, pong, close) and close the
        socket when it says so."""
        transport = self.transport
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
