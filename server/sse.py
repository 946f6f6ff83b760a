"""The SSE transport: subscriptions from the query string, resume from ``Last-Event-ID``.

Each market message carries ``id: <seq>~<epoch>~<market_id>``, its market's position; on
reconnect the browser sends the last one back as ``Last-Event-ID`` (or a client passes it
as ``?last_event_id=``) and that market is resumed exactly, the others receive fresh
snapshots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from channels.frame import Frame
from protocol import Delta, Position, ProtocolError, Resume, Snapshot, Subscribe
from server.gateway import Gateway
from server.rest import error_response
from server.session import Session


def position_token(frame: Frame) -> bytes | None:
    message = frame.message
    if isinstance(message, Snapshot | Delta):
        return f"{message.seq}~{message.epoch}~{message.market_id}".encode()
    return None


def parse_token(token: str) -> Position | None:
    seq, _, rest = token.partition("~")
    epoch, _, market_id = rest.partition("~")
    if not seq.isdigit() or not epoch or not market_id:
        return None
    return Position(market_id=market_id, epoch=epoch, seq=int(seq))


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


async def sse_endpoint(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    markets = _split(request.query_params.get("markets"))
    events = _split(request.query_params.get("events"))
    lobbies = _split(request.query_params.get("lobbies"))
    if not (markets or events or lobbies):
        return JSONResponse(
            {"type": "error", "code": "invalid", "message": "give markets=, events= or lobbies="},
            status_code=400,
        )
    session = gateway.open_session()
    # A browser's EventSource sends Last-Event-ID itself on its own reconnects; a client
    # opening a fresh stream cannot set headers, so the query string may carry it too.
    token = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    position = parse_token(token or "")
    try:
        if position is not None and position.market_id in markets:
            await session.execute(Resume(positions=(position,)))
            markets = tuple(m for m in markets if m != position.market_id)
        await session.execute(Subscribe(markets=markets, events=events, lobbies=lobbies))
    except ProtocolError as exc:
        await gateway.close_session(session)
        return error_response(exc.code, exc.message, 404 if exc.code.startswith("unknown") else 400)
    return EventSourceResponse(
        _stream(session, gateway),
        ping=3600,  # Heartbeats are protocol messages, sent by the stream itself.
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(session: Session, gateway: Gateway) -> AsyncIterator[bytes]:
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
            for frame in frames:
                token = position_token(frame)
                yield frame.sse if token is None else b"id: " + token + b"\n" + frame.sse
    finally:
        await gateway.close_session(session)
