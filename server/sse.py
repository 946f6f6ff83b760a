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

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from channels.store import StoreError
from protocol import Delta, ErrorCode, Position, ProtocolError, Resume, Snapshot, Subscribe
from server.gateway import Gateway
from server.rest import error_response, split_names
from server.resume_token import PositionTracker, TokenError, decode_token, legacy_token
from server.session import Session


def positions_of(token: str | None) -> list[Position]:
    """The positions of a resume token; none for a missing or unreadable one (the stream
    then starts afresh, which is always correct)."""
    if not token:
        return []
    try:
        return decode_token(token)
    except TokenError:
        return []


async def sse_endpoint(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    query = request.query_params
    markets, events, lobbies = (split_names(query.get(k)) for k in ("markets", "events", "lobbies"))
    if not (markets or events or lobbies):
        return error_response(ErrorCode.INVALID, "give markets=, events= or lobbies=", 400)
    conflate_ms = query.get("conflate_ms")
    if conflate_ms is not None and not (conflate_ms.isascii() and conflate_ms.isdigit()):
        return error_response(ErrorCode.INVALID, "conflate_ms must be an integer", 400)
    # A browser's EventSource sends Last-Event-ID itself on its own reconnects; a client
    # opening a fresh stream cannot set headers, so the query string may carry it too.
    token = request.headers.get("last-event-id") or query.get("last_event_id")
    session = gateway.open_session()
    try:
        if conflate_ms is not None:
            session.conflate(int(conflate_ms))
        resumed = await _open(session, gateway, positions_of(token), markets, events, lobbies)
    except ProtocolError as exc:
        await gateway.close_session(session)
        return error_response(exc.code, exc.message, 404 if exc.code.startswith("unknown") else 400)
    except StoreError as exc:
        await gateway.close_session(session)
        return error_response(ErrorCode.UNAVAILABLE, str(exc), 503)
    except BaseException:
        await gateway.close_session(session)
        raise
    tracker = PositionTracker(budget=gateway.limits.token_budget)
    for p in resumed:
        tracker.update(p.market_id, p.epoch, p.seq)
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
            # One write per batch; each market message carries the token of the books
            # the client holds once it has applied that message.
            chunk = bytearray()
            for frame in frames:
                message = frame.message
                if isinstance(message, Snapshot | Delta):
                    tracker.update(message.market_id, message.epoch, message.seq)
                    token = tracker.token() or legacy_token(
                        message.market_id, message.epoch, message.seq
                    )
                    chunk += b"id: " + token.encode() + b"\n"
                chunk += frame.sse
            yield bytes(chunk)
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
