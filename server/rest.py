"""REST: events, market summaries, markets' snapshots, health and metrics.

A snapshot answer carries the header ``X-Oddstream-Token``: the resume token of the
snapshots it holds (:mod:`server.resume_token`). Passed to ``/sse`` as ``Last-Event-ID``
or ``?last_event_id=``, it continues every one of those markets from exactly the
snapshot's seq, so a client can load over HTTP and then stream with nothing missed or
doubled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from functools import partial
from typing import NamedTuple

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import protocol
from channels.store import MarketSummary, StoreError
from protocol import ErrorCode, ProtocolError, Snapshot
from protocol.types import MAX_NAME_CHARS, MAX_NAMES
from server.auth import BookLookup, Grant, bearer
from server.gateway import Gateway
from server.resume_token import PositionTracker
from server.session import lookup_books

_encoder = msgspec.json.Encoder(decimal_format="string")

#: Response header carrying the resume token of the snapshots in the body.
TOKEN_HEADER = "X-Oddstream-Token"  # noqa: S105 - a header name, not a secret


def json_response(
    payload: bytes, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        payload, status_code=status_code, media_type="application/json", headers=headers
    )


def error_response(code: str, message: str, status_code: int) -> Response:
    return json_response(
        _encoder.encode({"type": "error", "code": code, "message": message}), status_code
    )


#: HTTP status of each refusal code (any other: 400).
_STATUS: dict[str, int] = {
    ErrorCode.UNKNOWN_MARKET: 404,
    ErrorCode.UNKNOWN_EVENT: 404,
    ErrorCode.UNKNOWN_LOBBY: 404,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
}
#: Digits of an integer query parameter (``conflate_ms``): ``int()`` of thousands of
#: digits is slow or refused, and ``²`` is a digit to ``str.isdigit``.
MAX_INT_DIGITS = 9


def http_status(code: str) -> int:
    """The HTTP status of a refusal with error ``code``."""
    return _STATUS.get(code, 400)


def refusal(exc: ProtocolError) -> Response:
    return error_response(exc.code, exc.message, http_status(exc.code))


class StreamQuery(NamedTuple):
    """What an SSE or snapshot query string asks for."""

    markets: tuple[str, ...]
    events: tuple[str, ...]
    lobbies: tuple[str, ...]
    conflate_ms: int | None


def stream_query(query: Mapping[str, str]) -> StreamQuery:
    """The names and ``conflate_ms`` of a query string, within the protocol's limits.
    Raises :class:`ProtocolError` (``invalid``) for none of ``markets=``, ``events=``,
    ``lobbies=``, or any of them or ``conflate_ms=`` out of bounds."""
    markets, events, lobbies = (split_names(query.get(k)) for k in ("markets", "events", "lobbies"))
    if not (markets or events or lobbies):
        raise ProtocolError(ErrorCode.INVALID, "give markets=, events= or lobbies=")
    return StreamQuery(markets, events, lobbies, query_int(query, "conflate_ms"))


def query_int(query: Mapping[str, str], name: str) -> int | None:
    """An integer query parameter: 1 to :data:`MAX_INT_DIGITS` ASCII digits. Raises
    :class:`ProtocolError` (``invalid``)."""
    value = query.get(name)
    if value is None:
        return None
    if not (0 < len(value) <= MAX_INT_DIGITS and value.isascii() and value.isdigit()):
        raise ProtocolError(ErrorCode.INVALID, f"{name} must be an integer")
    return int(value)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def list_events(request: Request) -> Response:
    """``GET /v1/events?sport=``: the events of which the caller may follow something
    (the event, or one of its markets: ``docs/auth.md``), by start time."""
    gateway = _gateway(request)
    try:
        grant = await _caller(request)
    except ProtocolError as exc:
        return refusal(exc)
    events = await gateway.store.events(request.query_params.get("sport"))
    if not grant.everything:
        seen = {m.event_id for m in _visible(grant, await gateway.store.summaries())}
        events = [e for e in events if e.event_id in seen or grant.allows(f"event:{e.event_id}")]
    events.sort(key=lambda e: (e.start_time, e.event_id))
    return json_response(_encoder.encode(events))


async def get_event(request: Request) -> Response:
    """``GET /v1/events/{event_id}``: an event the caller may follow something of (as
    listed), else the refusal a ``subscribe`` to it would get."""
    event_id = request.path_params["event_id"]
    gateway = _gateway(request)
    try:
        grant = await _caller(request)
        if not grant.everything and not _visible(grant, await gateway.store.summaries(event_id)):
            await gateway.auth.authorize(grant, (), (event_id,), (), _books(gateway))
    except ProtocolError as exc:
        return refusal(exc)
    event = await gateway.store.event(event_id)
    if event is None:
        return error_response("unknown_event", f"unknown event: {event_id}", 404)
    return json_response(protocol.encode(event))


async def list_markets(request: Request) -> Response:
    """``GET /v1/markets?event_id=``: the markets the caller may follow (``docs/auth.md``)."""
    try:
        grant = await _caller(request)
    except ProtocolError as exc:
        return refusal(exc)
    summaries = await _gateway(request).store.summaries(request.query_params.get("event_id"))
    return json_response(_encoder.encode(_visible(grant, summaries)))


def _visible(grant: Grant, summaries: list[MarketSummary]) -> list[MarketSummary]:
    if grant.everything:
        return summaries
    return [m for m in summaries if grant.allows_market(m.market_id, m.event_id, m.sport, m.main)]


async def _caller(request: Request) -> Grant:
    """The grant of the request's ``Authorization: Bearer`` token, the anonymous grant
    without one. Raises :class:`ProtocolError` for a refused token."""
    return await _gateway(request).auth.credentials(request.headers.get("authorization"), None)


async def authorized(request: Request, query: StreamQuery) -> None:
    """Check the request's ``Authorization: Bearer`` token (or its absence) against the
    names it asks for, as :meth:`server.session.Session.authorize` does for streams.
    Raises :class:`ProtocolError`."""
    gateway = _gateway(request)
    grant = await _caller(request)
    await gateway.auth.authorize(grant, query.markets, query.events, query.lobbies, _books(gateway))


def _books(gateway: Gateway) -> BookLookup:
    return partial(lookup_books, gateway.relay, gateway.store)


async def get_market(request: Request) -> Response:
    market_id = request.path_params["market_id"]
    gateway = _gateway(request)
    if len(market_id) > MAX_NAME_CHARS:
        return error_response(ErrorCode.INVALID, "market id too long", 400)
    try:
        await authorized(request, StreamQuery((market_id,), (), (), None))
    except ProtocolError as exc:
        return refusal(exc)
    snapshot = gateway.relay.current(market_id) or await gateway.store.snapshot(market_id)
    if snapshot is None:
        return error_response("unknown_market", f"unknown market: {market_id}", 404)
    return json_response(protocol.encode(snapshot), headers=_token_header(gateway, [snapshot]))


async def get_snapshots(request: Request) -> Response:
    """``GET /v1/snapshots?markets=a,b&events=x&lobbies=football``: the snapshots of the
    named markets, of every market of the events and of the sports' main markets, as a
    JSON array (each the same object as a ``snapshot`` message), with their resume token
    in ``X-Oddstream-Token``. All or nothing: an unknown name is a 404."""
    gateway = _gateway(request)
    try:
        query = stream_query(request.query_params)
        await authorized(request, query)
    except ProtocolError as exc:
        return refusal(exc)
    markets, events, lobbies, _ = query
    limit = gateway.settings.max_subscriptions
    if len(markets) + len(events) + len(lobbies) > limit:
        return error_response(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} names per request", 400
        )
    store = gateway.store
    ids = list(markets)
    for event_id in events:
        if await store.event(event_id) is None:
            return error_response(ErrorCode.UNKNOWN_EVENT, f"unknown event: {event_id}", 404)
        ids += await store.market_ids(event_id)
    for sport in lobbies:
        if not await store.events(sport):
            return error_response(ErrorCode.UNKNOWN_LOBBY, f"no events for sport {sport!r}", 404)
        ids += await store.lobby(sport)
    ids = list(dict.fromkeys(ids))
    # The node's own books where it has them (as fresh as what its clients see), else
    # storage; each is an exact book at its seq either way.
    local = {m: s for m in ids if (s := gateway.relay.current(m)) is not None}
    stored = {s.market_id: s for s in await store.snapshots(m for m in ids if m not in local)}
    missing = [m for m in markets if m not in local and m not in stored]
    if missing:
        return error_response(
            ErrorCode.UNKNOWN_MARKET, f"unknown market(s): {', '.join(missing)}", 404
        )
    snapshots = [s for m in ids if (s := local.get(m) or stored.get(m)) is not None]
    body = b"[" + b",".join(protocol.encode(s) for s in snapshots) + b"]"
    return json_response(body, headers=_token_header(gateway, snapshots))


def split_names(value: str | None) -> tuple[str, ...]:
    """``a,b,,a`` -> ``("a", "b")``: a comma-separated query parameter, deduplicated.
    Raises :class:`ProtocolError` (``invalid``) past :data:`~protocol.types.MAX_NAMES`
    names or a name of more than :data:`~protocol.types.MAX_NAME_CHARS` characters,
    checked before the value is split."""
    if not value:
        return ()
    if value.count(",") >= 2 * MAX_NAMES:
        raise ProtocolError(ErrorCode.INVALID, f"at most {MAX_NAMES} names")
    names = tuple(dict.fromkeys(v for v in value.split(",") if v))
    if len(names) > MAX_NAMES or any(len(v) > MAX_NAME_CHARS for v in names):
        raise ProtocolError(
            ErrorCode.INVALID, f"at most {MAX_NAMES} names of {MAX_NAME_CHARS} characters"
        )
    return names


async def issue_ticket(request: Request) -> Response:
    """``POST /v1/tickets`` with ``Authorization: Bearer <jwt>``: a single-use ticket
    standing for the token's grant, for ``/sse?ticket=`` (``docs/auth.md``)."""
    gateway = _gateway(request)
    auth = gateway.auth
    try:
        if bearer(request.headers.get("authorization")) is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <token>")
        ticket = auth.tickets.issue(await _caller(request))
    except ProtocolError as exc:
        return refusal(exc)
    ttl = gateway.settings.ticket_ttl_s
    return json_response(_encoder.encode({"ticket": ticket, "expires_in": ttl}))


def _token_header(gateway: Gateway, snapshots: Iterable[Snapshot]) -> dict[str, str]:
    """The resume-token header of ``snapshots``; none when the token would pass the
    budget (resume then starts from fresh snapshots)."""
    tracker = PositionTracker(budget=gateway.limits.token_budget)
    for s in snapshots:
        tracker.update(s.market_id, s.epoch, s.seq)
    token = tracker.token()
    return {} if token is None else {TOKEN_HEADER: token}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when started, not draining, and storage answers (a load balancer stops
    sending new clients to a gateway that cannot serve snapshots)."""
    gateway = _gateway(request)
    if not gateway.ready or gateway.draining:
        return JSONResponse({"status": "draining" if gateway.draining else "starting"}, 503)
    try:
        await gateway.store.ping()
    except StoreError as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, 503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    gateway = _gateway(request)
    lines = [
        "# TYPE oddstream_connections gauge",
        f"oddstream_connections {gateway.stats.connections}",
        "# TYPE oddstream_connections_total counter",
        f"oddstream_connections_total {gateway.stats.connections_total}",
        "# TYPE oddstream_deliveries_total counter",
        f"oddstream_deliveries_total {gateway.hub.delivered}",
        "# TYPE oddstream_slow_consumer_closes_total counter",
        f"oddstream_slow_consumer_closes_total {gateway.stats.slow_consumer_closes}",
        "# TYPE oddstream_dead_client_closes_total counter",
        f"oddstream_dead_client_closes_total {gateway.stats.dead_client_closes}",
    ]
    for name, value in msgspec.structs.asdict(gateway.conflation).items():
        lines += [
            f"# TYPE oddstream_conflation_{name}_total counter",
            f"oddstream_conflation_{name}_total {value}",
        ]
    for name, value in gateway.relay.sizes().items():
        lines += [f"# TYPE oddstream_relay_{name} gauge", f"oddstream_relay_{name} {value}"]
    for name, value in msgspec.structs.asdict(gateway.relay.stats).items():
        lines += [
            f"# TYPE oddstream_relay_{name}_total counter",
            f"oddstream_relay_{name}_total {value}",
        ]
    lines.append("# TYPE oddstream_auth_refusals_total counter")
    lines += [
        f'oddstream_auth_refusals_total{{code="{code}"}} {n}'
        for code, n in gateway.auth.refusals.items()
    ]
    for name, value in dataclasses.asdict(gateway.session_stats).items():
        lines += [f"# TYPE oddstream_{name}_total counter", f"oddstream_{name}_total {value}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
