"""The one seam where a connection becomes a WebSocket, an SSE stream or an HTTP request.

Each accepted socket gets one :class:`EdgeConnection`. It passes :class:`Admission`
(node and per-address caps), then reads request heads with the public sans-I/O ``h11``
parser under a size bound (``max_head_bytes``, 431) and a deadline (``header_timeout_s``
from the connection's start or a request's first byte; ``idle_timeout_s`` on an idle
keep-alive connection and for a request body), and decides here, in one place:

* ``GET /ws`` with ``Upgrade: websocket`` -> :class:`server.ws.WebSocketConnection`
  (Origin checked; handshake and frames through ``websockets``' sans-I/O protocol), and
  ``GET /graphql`` with it -> :class:`server.graphql_ws.GraphQLWsConnection` (the same);
* ``GET /sse`` -> :class:`server.sse.SseConnection` (Origin checked), on a connection's
  first request or any later one;
* anything else -> the ASGI app: keep-alive, bounded bodies (413), streamed responses,
  ``HEAD``, ``Connection: close``, 400 for a malformed head, 505 for a version other
  than HTTP/1.0 and 1.1, CORS headers from :meth:`Admission.cors`, and no ``server``
  header.

:class:`Lifespan` drives the app's startup and shutdown; :func:`server.serve.serve`
opens the listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import h11
import msgspec

from server.admission import Admission, Ticket
from server.graphql import PATH as GRAPHQL_PATH
from server.graphql_ws import GraphQLWsConnection
from server.settings import Settings
from server.sse import SseConnection
from server.streams import Streams
from server.ws import PATH as WS_PATH
from server.ws import WebSocketConnection

log = logging.getLogger(__name__)

ASGIApp = Callable[..., Any]
Message = dict[str, Any]

SSE_PATH = "/sse"
_STREAMED = (WS_PATH, SSE_PATH, GRAPHQL_PATH)
_VERSIONS = (b"1.0", b"1.1")
#: How long a refused connection is kept to read what the client sent (so that closing it
#: does not reset the refusal away) before it is dropped.
_REFUSAL_LINGER_S = 1.0
_PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Last-Event-ID, Content-Type"),
    (b"access-control-max-age", b"600"),
]


@dataclass
class Edge:
    """What every connection of one listener shares. ``streams`` is None on the operator
    listener (no WebSocket, no SSE); ``admission`` None there too (no caps, no CORS)."""

    app: ASGIApp
    settings: Settings
    streams: Streams | None = None
    admission: Admission | None = None
    connections: set[EdgeConnection] = field(default_factory=set)
    closing: bool = False

    def shutdown(self) -> None:
        """Stop serving: idle connections close now, busy ones after their answer."""
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown()


def error_body(
    status: int, code: str, message: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A protocol ``error`` answer: (status, headers, body)."""
    body = msgspec.json.encode({"type": "error", "code": code, "message": message})
    return status, [(b"content-type", b"application/json")], body


class EdgeConnection(asyncio.Protocol):
    """One accepted socket until it becomes a stream, or for its whole life as HTTP."""

    def __init__(self, edge: Edge):
        self.edge = edge
        self.settings = edge.settings
        self.transport: asyncio.Transport | None = None
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=edge.settings.max_head_bytes
        )
        self._ticket: Ticket | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._sockname: tuple[str, int] = ("", 0)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._fresh = True  # Nothing of the current request received yet.
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_done = asyncio.Event()
        self._body_ready = asyncio.Event()
        self._delivered = False  # The app has the whole body.
        self._finished = asyncio.Event()  # The client is gone or the answer complete.
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = False
        self._closed = False  # We closed it: nothing more is read.
        self._refused = False  # Refused by admission: nothing is read.
        self._handed_over = False
        self._cors: list[tuple[bytes, bytes]] = []
        self._received = 0  # Bytes of the current request cycle.
        self._budget = edge.settings.max_head_bytes + edge.settings.max_body_bytes
        self._paused = False
        self._head_only = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        sockname = transport.get_extra_info("sockname") or ("", 0)
        self._sockname = (str(sockname[0]), int(sockname[1]))
        admission = self.edge.admission
        if admission is not None:
            self._ticket = admission.admit(self._peer[0])
            if self._ticket is None:
                self._refuse_connection()
                return
        self.edge.connections.add(self)
        self._arm("header", self.settings.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # Read and dropped until the refusal's linger ends.
        if self._fresh:
            self._fresh = False
            if self._timer_kind == "idle":  # Keep-alive: the next request started.
                self._arm("header", self.settings.header_timeout_s)
        self._received += len(data)
        if self._received > self._budget and self._task is not None and not self._paused:
            # The client sends ahead of our answer (pipelining): stop reading until the
            # answer is out, so what h11 buffers stays bounded.
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._h11.receive_data(data)
        self._advance()

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        self._h11.receive_data(b"")
        self._advance()
        return None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        self._writable.set()
        self._body_ready.set()
        self._finished.set()
        self.edge.connections.discard(self)
        if self._ticket is not None and not self._handed_over:
            self._ticket.release()

    def shutdown(self) -> None:
        """The listener stops: close now unless a request is being answered."""
        if self._task is None:
            self._close()

    # -- reading ----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Take every complete event h11 has, until it needs more data or waits for us."""
        conn = self._h11
        while not (self._lost or self._handed_over or self._closed):
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._disarm()
                self._body_done.set()
                self._body_ready.set()
                if self._task is None and conn.our_state is h11.DONE:
                    self._cycle_done()  # Answered from here before the request ended.
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self._disarm()
        if request.http_version not in _VERSIONS:
            self._answer_now(*error_body(505, "invalid", "HTTP/1.0 and HTTP/1.1 only"), close=True)
            self._count_bad()
            return
        size = len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
        if size > self.settings.max_head_bytes:  # h11 bounds only a head still incomplete.
            self._bad_request(431, "request head too large")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        origin = headers.get("origin")
        host = headers.get("host")
        streams = self.edge.streams
        admission = self.edge.admission
        upgrade = headers.get("upgrade", "").lower() == "websocket"
        if streams is not None and path in _STREAMED and request.method == b"GET":
            if path != SSE_PATH and not upgrade:
                pass  # A plain GET /ws (404) or /graphql (a query): the app answers.
            elif admission is not None and not admission.origin_allowed(origin, host):
                admission.refuse_origin()
                self._answer_now(
                    *error_body(403, "forbidden_origin", f"origin not allowed: {origin}"),
                    close=True,
                )
                return
            elif upgrade:
                kind = GraphQLWsConnection if path == GRAPHQL_PATH else WebSocketConnection
                self._become(kind(streams, self._ticket), _head_of(request))
                return
            else:
                cors = [] if admission is None else admission.cors(origin, host)
                extra = b"".join(k + b": " + v + b"\r\n" for k, v in cors)
                self._become(SseConnection(streams, self._ticket, target, headers, extra), b"")
                return
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.settings.max_body_bytes:
            self._count_bad()  # Refused before a byte of it is read.
            self._answer_now(*error_body(413, "too_large", "request body too large"), close=True)
            return
        self._cors = [] if admission is None else admission.cors(origin, host)
        if request.method == b"OPTIONS" and self._cors:
            self._answer_now(204, self._cors + _PREFLIGHT_HEADERS, b"")
            return
        self._head_only = request.method == b"HEAD"
        self._body, self._body_size = [], 0
        self._body_done.clear()
        self._body_ready.clear()
        self._delivered = False
        self._finished = asyncio.Event()
        self._arm("idle", self.settings.idle_timeout_s)  # The body's deadline.
        self._task = asyncio.get_running_loop().create_task(self._run_app(request))

    def _on_body(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self.settings.max_body_bytes:
            self._count_bad()
            if self._task is not None and self._h11.our_state is h11.SEND_RESPONSE:
                self._task.cancel()
                self._task = None
                self._answer_now(
                    *error_body(413, "too_large", "request body too large"), close=True
                )
            else:
                self._close()
            return
        self._body.append(data)
        self._body_ready.set()

    def _become(self, protocol: asyncio.Protocol, data: bytes) -> None:
        """Hand the socket to a stream with ``data`` (the request head to replay, for the
        WebSocket's own parser) and whatever the client sent after the head."""
        transport = self.transport
        assert transport is not None
        self._handed_over = True
        self._disarm()
        self.edge.connections.discard(self)
        trailing = self._h11.trailing_data[0]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data or trailing:
            protocol.data_received(data + trailing)

    # -- the ASGI app -----------------------------------------------------------------------

    async def _run_app(self, request: h11.Request) -> None:
        target = request.target
        raw_path, _, query = target.partition(b"?")
        scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw_items()],
            "client": self._peer,
            "server": self._sockname,
        }
        try:
            await self.edge.app(scope, self._receive, self._send)
        except Exception:
            log.exception("the app failed on %s %s", request.method, raw_path)  # No query.
            if self._h11.our_state is h11.SEND_RESPONSE and not self._lost:
                self._answer_now(*error_body(500, "internal", "internal error"), close=True)
                return
            self._close()
            return
        finally:
            self._task = None
        self._cycle_done()

    async def _receive(self) -> Message:
        """The request body (in the pieces received), then ``http.disconnect`` once the
        client is gone or the answer is complete."""
        if not self._delivered:
            while not self._body and not self._body_done.is_set() and not self._lost:
                self._body_ready.clear()
                await self._body_ready.wait()
            if not self._lost:
                body = b"".join(self._body)
                self._body.clear()
                more = not self._body_done.is_set()
                self._delivered = not more
                return {"type": "http.request", "body": body, "more_body": more}
        await self._finished.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._lost:
            return
        kind = message["type"]
        conn = self._h11
        if kind == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            if self.edge.closing:
                headers.append((b"connection", b"close"))
            self._write(
                conn.send(
                    h11.Response(
                        status_code=message["status"],
                        headers=headers + self._cors,
                        reason=_reason(message["status"]),
                    )
                )
            )
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body and not self._head_only:
                self._write(conn.send(h11.Data(data=body)))
            if not message.get("more_body", False):
                self._write(conn.send(h11.EndOfMessage()))
                self._finished.set()
            await self._writable.wait()  # Flow control for streamed answers.

    # -- answers ----------------------------------------------------------------------------

    def _answer_now(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        close: bool = False,
    ) -> None:
        """Answer the current request from here (no app), then keep the connection
        for the next one unless ``close``."""
        conn = self._h11
        if conn.our_state is not h11.SEND_RESPONSE:
            self._close()
            return
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if close or self.edge.closing:
            headers.append((b"connection", b"close"))
        try:
            response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
            self._write(conn.send(response))
            if body and not self._head_only:
                self._write(conn.send(h11.Data(data=body)))
            self._write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            self._close()
            return
        if close:
            self._close()
        else:
            self._cycle_done()

    def _bad_request(self, status: int, reason: str) -> None:
        """A head h11 cannot read: 400/431 (or the hint it gives), then close."""
        self._count_bad()
        if self._task is not None:  # The app is not answering a broken request.
            self._task.cancel()
            self._task = None
        if self._h11.our_state is not h11.SEND_RESPONSE:
            # h11 answers only in the states where a response may start.
            self._write(_raw_answer(status))
            self._close()
            return
        code = "too_large" if status == 431 else "invalid"
        self._answer_now(*error_body(status, code, reason), close=True)

    def _count_bad(self) -> None:
        if self.edge.admission is not None:
            self.edge.admission.stats.bad_requests += 1

    def _cycle_done(self) -> None:
        """The answer went out: next request on the same connection, or close."""
        conn = self._h11
        if self._lost or self._handed_over:
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if conn.our_state is h11.DONE and conn.their_state is h11.SEND_BODY:
            self._arm("idle", self.settings.idle_timeout_s)  # The rest of the request first.
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE and not self.edge.closing:
            conn.start_next_cycle()
            self._fresh = True
            self._received = 0
            self._arm("idle", self.settings.idle_timeout_s)
            self._advance()  # A pipelined request may be buffered already.
        elif conn.our_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._close()

    def _write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self._lost:
            self.transport.write(data)

    def _close(self) -> None:
        self._closed = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _refuse_connection(self) -> None:
        """The node or the address is full: 503 at once, then read and drop what the
        client sends until it goes or a second passes (closing a socket with unread data
        would reset it, and the client might never see the answer)."""
        transport = self.transport
        assert transport is not None
        self._refused = True
        _, headers, body = error_body(503, "unavailable", "too many connections; retry later")
        head = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\n"
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        transport.write(head + body)
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, transport.abort)

    # -- deadlines --------------------------------------------------------------------------

    def _arm(self, kind: str, delay: float) -> None:
        self._disarm()
        self._timer_kind = kind
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = ""

    def _expired(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, ""
        stats = self.edge.admission.stats if self.edge.admission is not None else None
        if stats is not None:
            if kind == "header" and not self._fresh:
                stats.header_timeouts += 1
            else:
                stats.idle_timeouts += 1
        if self._task is None and not self._fresh and self._h11.our_state is h11.IDLE:
            self._write(_raw_answer(408))  # A head or body that never completed.
        self._close()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _raw_answer(status: int) -> bytes:
    """A complete answer written without h11 (its state no longer allows one)."""
    head = b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    return head % (status, _reason(status))


def _head_of(request: h11.Request) -> bytes:
    """The request head as the client sent it (names in their case), for a parser that
    reads it again (the WebSocket handshake)."""
    lines = [request.method + b" " + request.target + b" HTTP/" + request.http_version]
    lines += [name + b": " + value for name, value in request.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Lifespan:
    """Drives an ASGI app's lifespan: :meth:`startup` before serving, :meth:`shutdown`
    after. Raises :class:`RuntimeError` when the app reports a failed startup."""

    def __init__(self, app: ASGIApp):
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=2)
        self._events: dict[str, asyncio.Future[Message]] = {}
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._events = {phase: loop.create_future() for phase in ("startup", "shutdown")}
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._outcome("startup")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await self._outcome("shutdown")
        finally:
            await self._task

    async def _outcome(self, phase: str) -> None:
        message = await self._events[phase]
        if message["type"].endswith(".failed"):
            raise RuntimeError(f"{phase} failed: {message.get('message', '')}")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            for future in self._events.values():
                if not future.done():
                    future.set_result({"type": "lifespan.failed", "message": repr(exc)})
            raise

    async def _send(self, message: Message) -> None:
        phase = message["type"].split(".")[1]
        future = self._events[phase]
        if not future.done():
            future.set_result(message)
