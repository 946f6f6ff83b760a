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
import logging
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import msgspec

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
from server.admission import Ticket
from server.gateway import Gateway
from server.rest import http_status, stream_query
from server.resume_token import (
    PositionTracker,
    TokenCache,
    TokenError,
    decode_token,
    legacy_token,
)
from server.session import ConnectionInfo, Session
from server.streams import StreamConnection, Streams

log = logging.getLogger(__name__)


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


_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\n"
    b"x-accel-buffering: no\r\n"
    b"transfer-encoding: chunked\r\n"
    b"connection: close\r\n"
)


class SseConnection(StreamConnection):
    """A ``GET /sse`` request, on a connection's first request or a later one (the edge,
    :mod:`server.listener`, hands the socket over): the stream is written straight on
    the socket, coalesced like the WebSocket's (one chunk per client per flush), with no
    task per connection once it is open. The answer ends the connection."""

    def __init__(
        self,
        streams: Streams,
        ticket: Ticket | None,
        target: str,
        headers: Mapping[str, str],
        extra_head: bytes = b"",
    ):
        """``extra_head``: header lines (each ending in CRLF) added to the answer, e.g.
        CORS from :meth:`server.admission.Admission.cors`."""
        super().__init__(streams, ticket)
        self._target = target
        self._headers = headers
        self._extra_head = extra_head
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
        except asyncio.CancelledError:
            await gateway.close_session(session)
            raise
        except Exception:
            # A failure of ours must still answer the client, never leave a silent socket.
            log.exception("opening an SSE stream failed: %s", self._target)
            await gateway.close_session(session)
            self._refuse(StreamRefused("internal", "internal error", 500))
            return
        finally:
            self._opening = None
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            await gateway.close_session(session)
            return
        self._tracker = tracker
        transport.write(_HEAD + self._extra_head + b"\r\n")
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
            f"content-length: {len(body)}\r\nconnection: close\r\n".encode()
            + self._extra_head
            + b"\r\n"
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
