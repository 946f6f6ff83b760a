"""The SSE transport: subscriptions from the query string, resume from ``Last-Event-ID``.

Each market message carries ``id: <token>``, a resume token holding the position of
*every* market the stream has sent (:mod:`server.resume_token`), kept current as frames
go out. On reconnect the browser sends the last one back as ``Last-Event-ID`` (or a
client passes it as ``?last_event_id=``, e.g. the token of a REST snapshot): every market
it names that the query string still covers resumes exactly (or gets a ``reset``
snapshot when its history is gone); the others start from a fresh snapshot. A stream
whose token would pass the budget (thousands of markets) carries the older
single-market token ``<seq>~<epoch>~<market_id>`` instead, which resumes that market.

``?conflate_ms=N`` asks for at most one update per market every N ms. A stream whose
client stops reading ends when one write stays blocked past ``send_timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from channels.frame import Frame
from channels.store import StoreError
from protocol import (
    CloseCode,
    Delta,
    ErrorCode,
    Position,
    ProtocolError,
    Resume,
    Snapshot,
    Subscribe,
)
from server.gateway import Gateway
from server.rest import error_response, http_status, stream_query
from server.resume_token import (
    PositionTracker,
    TokenCache,
    TokenError,
    decode_token,
    legacy_token,
)
from server.session import ConnectionInfo, Session
from server.streams import StreamConnection, Streams


def positions_of(token: str | None) -> list[Position]:
    """The positions of a resume token; none for a missing or unreadable one (the stream
    then starts afresh, which is always correct)."""
    if not token:
        return []
    try:
        return decode_token(token)
    except TokenError:
        return []


class StreamRefused(Exception):
    """The stream cannot start: HTTP ``status`` with a protocol error body."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


async def open_stream(
    gateway: Gateway, session: Session, query: Mapping[str, str], token: str | None
) -> PositionTracker:
    """Subscribe ``session`` as the query string asks, resuming what ``token`` (from
    ``Last-Event-ID`` or ``?last_event_id=``) positions. Returns the tracker of the
    stream's positions. Raises :class:`StreamRefused`; the caller closes the session."""
    try:
        markets, events, lobbies, conflate_ms = stream_query(query)
        if conflate_ms is not None:
            session.conflate(conflate_ms)
        resumed = await _open(session, gateway, positions_of(token), markets, events, lobbies)
    except ProtocolError as exc:
        raise StreamRefused(exc.code, exc.message, http_status(exc.code)) from None
    except StoreError as exc:
        raise StreamRefused(ErrorCode.UNAVAILABLE, str(exc), 503) from None
    tracker = PositionTracker(budget=gateway.limits.token_budget)
    for p in resumed:
        tracker.update(p.market_id, p.epoch, p.seq)
    return tracker


def sse_chunk(
    frames: list[Frame], tracker: PositionTracker, cache: TokenCache | None = None
) -> bytes:
    """The SSE events of ``frames``, in one piece: each market message carries the
    token of the books the client holds once it has applied that message (from
    ``cache`` when another stream already made it)."""
    chunk = bytearray()
    for frame in frames:
        message = frame.message
        if isinstance(message, Snapshot | Delta):
            previous = tracker.current()
            tracker.update(message.market_id, message.epoch, message.seq)
            hit = None if cache is None or previous is None else cache.get(previous, frame)
            if hit is not None:
                tracker.adopt(hit[0])
                chunk += hit[1]
            else:
                token = tracker.token()
                if token is None:
                    legacy = legacy_token(message.market_id, message.epoch, message.seq)
                    chunk += b"id: " + legacy.encode() + b"\n"
                else:
                    line = b"id: " + token.encode() + b"\n"
                    if cache is not None and previous is not None:
                        cache.put(previous, frame, token, line)
                    chunk += line
        chunk += frame.sse
    return bytes(chunk)


async def sse_endpoint(request: Request) -> Response:
    """The ASGI route: streams that do not start a connection (a keep-alive connection
    that served REST first). A connection whose first request is ``GET /sse`` is served
    by :class:`SseConnection` instead, straight on the socket."""
    gateway: Gateway = request.app.state.gateway
    # A browser's EventSource sends Last-Event-ID itself on its own reconnects; a client
    # opening a fresh stream cannot set headers, so the query string may carry it too.
    query = request.query_params
    token = request.headers.get("last-event-id") or query.get("last_event_id")
    info = ConnectionInfo(request.headers.get("authorization"), query.get("ticket"))
    session = gateway.open_session(info=info)
    try:
        tracker = await open_stream(gateway, session, query, token)
    except StreamRefused as exc:
        await gateway.close_session(session)
        return error_response(exc.code, exc.message, exc.status)
    except BaseException:
        await gateway.close_session(session)
        raise
    return _EventStream(gateway, _stream(session, gateway, tracker))


async def _open(
    session: Session,
    gateway: Gateway,
    positions: list[Position],
    markets: tuple[str, ...],
    events: tuple[str, ...],
    lobbies: tuple[str, ...],
) -> list[Position]:
    """Subscribe the session as the query string asks, resuming every market of the
    token that the query still covers. Returns the resumed positions: where the client's
    books stand before the first frame of the stream."""
    direct = [p for p in positions if p.market_id in markets]
    others = [p for p in positions if p.market_id not in markets]
    covered: list[Position] = []
    if others and (events or lobbies):
        snaps = await gateway.store.snapshots([p.market_id for p in others])
        keep = {
            s.market_id for s in snaps if s.event_id in events or (s.main and s.sport in lobbies)
        }
        covered = [p for p in others if p.market_id in keep]
    wanted = direct + covered
    if not wanted:
        await session.execute(Subscribe(markets=markets, events=events, lobbies=lobbies))
        return []
    await session.execute(Resume(positions=tuple(wanted), events=events, lobbies=lobbies))
    positioned = {p.market_id for p in direct}
    rest = tuple(m for m in markets if m not in positioned)
    if rest:
        await session.execute(Subscribe(markets=rest))
    hub = gateway.hub
    return [p for p in wanted if hub.is_attached(p.market_id, session)]


async def _stream(
    session: Session, gateway: Gateway, tracker: PositionTracker
) -> AsyncIterator[bytes]:
    outbox = session.outbox
    try:
        while True:
            frames = await outbox.take(gateway.settings.heartbeat_s)
            if not frames:
                if outbox.overflowed:
                    gateway.stats.slow_consumer_closes += 1
                    return
                if outbox.closed:
                    return
                frames = [gateway.heartbeat()]
            yield sse_chunk(frames, tracker, gateway.tokens)
    finally:
        await gateway.close_session(session)


class _EventStream(EventSourceResponse):
    """An event stream that counts a client dropped for not reading (a write blocked past
    the send timeout) instead of reporting it as a server error."""

    def __init__(self, gateway: Gateway, content: AsyncIterator[bytes]):
        super().__init__(
            content,
            ping=3600,  # Heartbeats are protocol messages, sent by the stream itself.
            send_timeout=gateway.limits.send_timeout_s,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self._gateway.stats.dead_client_closes += 1


_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\n"
    b"x-accel-buffering: no\r\n"
    b"transfer-encoding: chunked\r\n"
    b"connection: close\r\n"
    b"\r\n"
)


class SseConnection(StreamConnection):
    """A connection whose first request is ``GET /sse`` (see :mod:`server.front`): the
    stream is written straight on the socket, coalesced like the WebSocket's (one chunk
    per client per flush), with no task per connection once it is open."""

    def __init__(
        self, streams: Streams, server_state: Any, target: str, headers: Mapping[str, str]
    ):
        super().__init__(streams, server_state)
        self._target = target
        self._headers = headers
        self._tracker: PositionTracker | None = None
        self._opening: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._opening = asyncio.get_running_loop().create_task(self._open())

    def data_received(self, data: bytes) -> None:
        pass  # Nothing is expected from an SSE client after its request.

    def connection_lost(self, exc: Exception | None) -> None:
        if self._opening is not None:
            self._opening.cancel()
        super().connection_lost(exc)

    async def _open(self) -> None:
        url = urlsplit(self._target)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        token = self._headers.get("last-event-id") or query.get("last_event_id")
        gateway = self.gateway
        # Frames queue in the outbox while the stream opens; the flush writes nothing
        # before ``self.session`` is set, which happens once the head is written.
        info = ConnectionInfo(self._headers.get("authorization"), query.get("ticket"))
        session = gateway.open_session(waker=self.wake, info=info)
        try:
            tracker = await open_stream(gateway, session, query, token)
        except StreamRefused as exc:
            await gateway.close_session(session)
            self._refuse(exc)
            return
        except BaseException:
            await gateway.close_session(session)
            raise
        finally:
            self._opening = None
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            await gateway.close_session(session)
            return
        self._tracker = tracker
        transport.write(_HEAD)
        self.session = session
        self.wake()

    def _refuse(self, exc: StreamRefused) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = msgspec.json.encode({"type": "error", "code": exc.code, "message": exc.message})
        phrase = HTTPStatus(exc.status).phrase
        transport.write(
            f"HTTP/1.1 {exc.status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.closing = True
        transport.close()
        self.abort_later()

    def write(self, frames: list[Frame]) -> None:
        assert self.transport is not None
        assert self._tracker is not None
        chunk = sse_chunk(frames, self._tracker, self.gateway.tokens)
        self.transport.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")

    def end(self, code: CloseCode) -> None:
        """End the stream (the client reconnects with its last event id)."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        if self.session is not None and not transport.is_closing():
            transport.write(b"0\r\n\r\n")
        transport.close()
        self.abort_later()
