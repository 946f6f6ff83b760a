"""The OpenAPI 3.1 document of the gateway's HTTP API, made from the route types.

:data:`OPERATIONS` is the route table: each operation's path, method, parameters and the
msgspec types of its answers; the schemas are msgspec's JSON Schema of those types
(``components.schemas``), the summaries the endpoints' docstrings. Nothing is written
twice: the document is derived, served at ``/openapi.json`` and committed as
``docs/openapi.json``::

    python -m server.openapi            # write docs/openapi.json
    python -m server.openapi --check    # exit 1 if it is not what the types produce

A unit test checks every route :func:`server.app.build_app` mounts is here.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from archive.query import MAX_PAGE, HistoryPage, ResultsPage
from channels.store import MarketSummary
from protocol import EventState, Snapshot, schema
from server import graphql, rest

DOC = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
PATH = "/openapi.json"

In = Literal["query", "path", "header"]


class ErrorBody(msgspec.Struct, frozen=True):
    """Every refusal: ``code`` is machine-readable (``docs/protocol.md#error-codes``,
    ``docs/data.md``)."""

    type: Literal["error"]
    code: str
    message: str


class Health(msgspec.Struct, frozen=True):
    """``ok`` / ``ready``; when not ready, ``starting``, ``draining`` or ``unavailable``
    (with ``reason``)."""

    status: str
    reason: str | None = None


class GraphQLAnswer(msgspec.Struct, frozen=True):
    """A GraphQL answer (``docs/graphql.md``): ``data`` shaped by the document, and
    ``errors`` with ``extensions.code``."""

    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: In
    doc: str
    schema: dict[str, Any]
    required: bool = False


def _text(doc: str, *, required: bool = False, where: In = "query") -> Callable[[str], Param]:
    return lambda name: Param(name, where, doc, {"type": "string", "maxLength": 256}, required)


_MS = {"type": "integer", "minimum": 0, "maximum": 2**53}
_FROM = Param("from", "query", "feed time, epoch milliseconds", _MS, True)
_TO = Param("to", "query", "feed time, epoch milliseconds (at most 31 days after from)", _MS, True)
_LIMIT = Param(
    "limit", "query", "items per page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
)
_CURSOR = _text("the `next` of the previous page")("cursor")
_NAMES = "comma-separated, at most 500 names of 128 characters"


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: ``answer`` is the type of a 200 body (None: no JSON schema, e.g. a
    resume token header only), ``errors`` the statuses an ``error`` body comes with."""

    path: str
    method: Literal["get", "post"]
    summary: str | Callable[..., Any]  # Text, or the endpoint whose docstring says it.
    answer: Any
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = (400, 401, 403)
    body: Any = None


def _by_id(path: str, endpoint: Callable[..., Any], answer: Any) -> Operation:
    """``GET`` of one thing named by the last part of ``path``."""
    name = path.rsplit("{", 1)[1].rstrip("}")
    param = _text(name.replace("_", " "), required=True, where="path")(name)
    return Operation(path, "get", endpoint, answer, (param,), (400, 401, 403, 404))


OPERATIONS: tuple[Operation, ...] = (
    Operation("/v1/events", "get", rest.list_events, list[EventState], (_text("sport")("sport"),)),
    _by_id("/v1/events/{event_id}", rest.get_event, EventState),
    Operation(
        "/v1/markets",
        "get",
        rest.list_markets,
        list[MarketSummary],
        (_text("only this event's markets")("event_id"),),
    ),
    _by_id("/v1/markets/{market_id}", rest.get_market, Snapshot),
    Operation(
        "/v1/snapshots",
        "get",
        rest.get_snapshots,
        list[Snapshot],
        (
            _text(f"market ids, {_NAMES}")("markets"),
            _text(f"event ids, {_NAMES}")("events"),
            _text(f"sports, {_NAMES}")("lobbies"),
        ),
        (400, 401, 403, 404),
    ),
    Operation("/v1/tickets", "post", rest.issue_ticket, rest.TicketAnswer, (), (401, 403)),
    Operation(
        "/v1/markets/{market_id}/history",
        "get",
        "the book at `from` and the market's messages after it up to `to`",
        HistoryPage,
        (
            _text("market id", required=True, where="path")("market_id"),
            _FROM,
            _TO,
            _LIMIT,
            _CURSOR,
        ),
        (400, 401, 403, 404, 409, 503),
    ),
    Operation(
        "/v1/events/{event_id}/results",
        "get",
        "an event's result rows (settlements, voids, factors, rollbacks), oldest first",
        ResultsPage,
        (_text("event id", required=True, where="path")("event_id"), _LIMIT, _CURSOR),
        (400, 401, 403, 404, 503),
    ),
    Operation(
        "/v1/results",
        "get",
        "a sport's result rows between two instants (at most 31 days)",
        ResultsPage,
        (_text("sport", required=True)("sport"), _FROM, _TO, _LIMIT, _CURSOR),
        (400, 401, 403, 503),
    ),
    Operation(
        graphql.PATH,
        "get",
        graphql.endpoint,
        GraphQLAnswer,
        (
            _text("the document (query operations only)")("query"),
            _text("a JSON object")("variables"),
            _text("which operation of the document")("operationName"),
            _text("a JSON object (persisted queries)")("extensions"),
        ),
        (400,),
    ),
    Operation(
        graphql.PATH,
        "post",
        graphql.endpoint,
        GraphQLAnswer,
        (),
        (400, 413),
        graphql.GraphQLRequest,
    ),
    Operation("/healthz", "get", rest.healthz, Health, (), ()),
    Operation("/readyz", "get", rest.readyz, Health, (), (503,)),
    Operation(PATH, "get", "this document", None, (), ()),
)


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    types: list[Any] = [ErrorBody]
    for op in OPERATIONS:
        types += [t for t in (op.answer, op.body) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(repr, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oddstream gateway",
            "version": "1",
            "description": "REST and GraphQL over HTTP (docs/protocol.md#rest, docs/data.md, "
            "docs/graphql.md); streams are WebSocket /ws, SSE /sse and graphql-transport-ws "
            "/graphql (docs/schema/asyncapi.json).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def _operation(op: Operation, schema_of: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if op.answer is not None:
        ok["content"] = {"application/json": {"schema": schema_of[repr(op.answer)]}}
    responses: dict[str, Any] = {"200": ok}
    error = {"application/json": {"schema": schema_of[repr(ErrorBody)]}}
    for status in op.errors:
        responses[str(status)] = {"description": _REASONS[status], "content": error}
    out: dict[str, Any] = {
        "operationId": op.method + "".join(c if c.isalnum() else "_" for c in op.path),
        "summary": op.summary if isinstance(op.summary, str) else _summary(op.summary),
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "description": p.doc,
                "required": p.required,
                "schema": p.schema,
            }
            for p in op.params
        ],
        "responses": responses,
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[repr(op.body)]}},
        }
    return out


def _summary(endpoint: Callable[..., Any]) -> str:
    doc = inspect.cleandoc(endpoint.__doc__ or "")
    return " ".join(doc.split("\n\n", 1)[0].split())


_REASONS = {
    400: "bad request (error code says why)",
    401: "no token, or an invalid or expired one",
    403: "the token does not grant what is asked",
    404: "unknown market, event or lobby",
    409: "the archive lacks a message the book needs (history_gap)",
    413: "request body too large",
    503: "storage or the archive is unavailable",
}


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


@functools.cache
def _served() -> bytes:
    return render().encode()


async def serve(request: Request) -> Response:
    """``GET /openapi.json``: this document."""
    return Response(_served(), media_type="application/json")


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or ``--check``) ``docs/openapi.json``."""
    files = {DOC.name: render()}
    return schema.run(argv, prog="python -m server.openapi", files=files, out=DOC.parent)


if __name__ == "__main__":
    sys.exit(main())
