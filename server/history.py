"""REST over the archive (``docs/data.md``), mounted only when the gateway has ``--mysql``
(or, in ``oddstream dev``, the archive in memory):

- ``GET /v1/markets/{market_id}/history?from=&to=&limit=&cursor=``: the book at ``from``
  and the messages after it up to ``to`` (feed epoch milliseconds);
- ``GET /v1/events/{event_id}/results?limit=&cursor=``: an event's result rows;
- ``GET /v1/results?sport=&from=&to=&limit=&cursor=``: a sport's result rows in a window.

Answers are JSON; a page's ``next`` is the cursor of the next one (``null`` at the end).
Each route is authorised like the live API (``docs/auth.md``): a market's history needs the
right to follow the market (its own channel, or its event's or lobby's while the gateway
still knows the market), an event's results the event's channel, a sport's results its
lobby. Errors are JSON ``error`` objects: 400 for a bad parameter or cursor, 401/403 for a
missing or insufficient token, 404 for an unknown market or event, 409 for a history with
a gap, 503 when MySQL is unreachable. These
routes read MySQL through the archive's bounded pool; nothing on the live path (streams,
snapshots) waits on them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from archive.query import DEFAULT_PAGE, MAX_PAGE, HistorySource, QueryError
from protocol import ProtocolError
from server.rest import StreamQuery, authorized, error_response, json_response, refusal

_encoder = msgspec.json.Encoder(decimal_format="string")

#: HTTP status of each :class:`QueryError` code.
STATUS = {
    "unknown_market": 404,
    "not_found": 404,
    "bad_cursor": 400,
    "too_long": 400,
    "history_gap": 409,
    "unavailable": 503,
}
#: Longest parameter accepted (ids, sport, cursor), in characters.
MAX_PARAM = 256
#: Widest time window accepted, ms (31 days).
MAX_WINDOW_MS = 31 * 24 * 3600 * 1000
_TS_MAX = 2**53


class BadRequest(Exception):
    pass


def _ts(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise BadRequest(f"`{name}` is required (epoch milliseconds)")
    if not (0 < len(raw) <= 16 and raw.isascii() and raw.isdigit()) or int(raw) > _TS_MAX:
        raise BadRequest(f"`{name}` must be epoch milliseconds, 0-{_TS_MAX}")
    return int(raw)


def _window(request: Request) -> tuple[int, int]:
    start, end = _ts(request, "from"), _ts(request, "to")
    if end < start or end - start > MAX_WINDOW_MS:
        raise BadRequest(f"`to` must be >= `from` and at most {MAX_WINDOW_MS} ms after it")
    return start, end


def _page(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", str(DEFAULT_PAGE))
    if not (0 < len(raw) <= 5 and raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequest(f"`limit` must be 1-{MAX_PAGE}")
    cursor = request.query_params.get("cursor")
    if cursor is not None and len(cursor) > MAX_PARAM:
        raise BadRequest("`cursor` is too long")
    return int(raw), cursor


def _text(value: str, name: str) -> str:
    if not value or len(value) > MAX_PARAM:
        raise BadRequest(f"`{name}` must be 1-{MAX_PARAM} characters")
    return value


def _history(request: Request) -> HistorySource:
    history: HistorySource = request.app.state.history
    return history


def _endpoint(
    scope: Callable[[Request], StreamQuery],
    answer: Callable[[Request, HistorySource], Awaitable[msgspec.Struct]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            await authorized(request, scope(request))
            page = await answer(request, _history(request))
        except ProtocolError as exc:
            return refusal(exc)
        except BadRequest as exc:
            return error_response("bad_request", str(exc), 400)
        except QueryError as exc:
            return error_response(exc.code, exc.message, STATUS[exc.code])
        return json_response(_encoder.encode(page))

    return endpoint


async def _market_history(request: Request, history: HistorySource) -> msgspec.Struct:
    market_id = _text(request.path_params["market_id"], "market_id")
    start, end = _window(request)
    limit, cursor = _page(request)
    return await history.market_history(market_id, start, end, limit=limit, cursor=cursor)


async def _event_results(request: Request, history: HistorySource) -> msgspec.Struct:
    event_id = _text(request.path_params["event_id"], "event_id")
    limit, cursor = _page(request)
    return await history.event_results(event_id, limit=limit, cursor=cursor)


async def _results(request: Request, history: HistorySource) -> msgspec.Struct:
    sport = _text(request.query_params.get("sport", ""), "sport")
    start, end = _window(request)
    limit, cursor = _page(request)
    return await history.results(sport, start, end, limit=limit, cursor=cursor)


# What each route reads, as the names the live API's authorisation checks (bounded first).
def _of_market(request: Request) -> StreamQuery:
    return StreamQuery((_text(request.path_params["market_id"], "market_id"),), (), (), None)


def _of_event(request: Request) -> StreamQuery:
    return StreamQuery((), (_text(request.path_params["event_id"], "event_id"),), (), None)


def _of_sport(request: Request) -> StreamQuery:
    return StreamQuery((), (), (_text(request.query_params.get("sport", ""), "sport"),), None)


def routes() -> list[BaseRoute]:
    """The routes; they read ``app.state.history`` (a :class:`HistorySource`). Mount them before
    ``/v1/markets/{market_id:path}``, which would otherwise take ``.../history``."""
    return [
        Route("/v1/markets/{market_id:path}/history", _endpoint(_of_market, _market_history)),
        Route("/v1/events/{event_id}/results", _endpoint(_of_event, _event_results)),
        Route("/v1/results", _endpoint(_of_sport, _results)),
    ]
