"""GraphQL at ``/graphql`` (``docs/graphql.md``): the schema, the bounded preparation of a
document (shared with the subscriptions of :mod:`server.graphql_ws`) and the HTTP route.

The schema is declared with strawberry; parsing, validation and execution are
graphql-core's, driven here so every bound applies before the work it limits: the
request body is bounded by the edge, the document's length before it is parsed, its
depth and field count (fragments expanded, aliases included) before it is validated and
run. Resolvers read what REST reads (the gateway's store and relay, the archive's
:class:`~archive.query.HistorySource`) and authorise through the same rule
(:func:`server.rest.authorized`). A resolver's failure the client may see is a
:class:`QueryFailure` (code and message); any other exception is logged and answered
``internal error``.

``python -m server.graphql`` prints the schema (SDL).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from inspect import isawaitable
from pathlib import Path
from typing import Annotated, Any, NewType, TypeVar

import graphql
import msgspec
import strawberry
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.execution.values import VariableValues, get_variable_values
from starlette.requests import Request
from starlette.responses import Response
from strawberry.schema.config import StrawberryConfig
from strawberry.types.scalar import ScalarDefinition

import protocol
from archive.query import DEFAULT_PAGE, MAX_PAGE, HistorySource, QueryError, ResultRow
from channels.store import MarketSummary
from protocol import Delta, EventState, ProtocolError, Snapshot
from protocol.types import MAX_NAME_CHARS
from server.history import MAX_PARAM, MAX_WINDOW_MS
from server.rest import StreamQuery, authorized, visible_events, visible_markets
from server.settings import Settings, SettingsError

log = logging.getLogger(__name__)

PATH = "/graphql"
_TS_MAX = 2**53
T = TypeVar("T")


class QueryFailure(GraphQLError):
    """A refusal a client may see: ``code`` in ``extensions``, the message as it is."""

    def __init__(self, code: str, message: str):
        super().__init__(message, extensions={"code": code})
        self.code = code


class RequestError(Exception):
    """The request is refused before execution (HTTP 400, or a subscription's ``error``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- scalars -----------------------------------------------------------------------------

Long = NewType("Long", int)
JSON = NewType("JSON", object)


def _long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _TS_MAX:
        raise GraphQLError(f"Long must be an integer 0-{_TS_MAX}")
    return value


def _long_literal(node: Any, variables: Any = None) -> int:
    if not isinstance(node, graphql.IntValueNode) or len(node.value) > 16:
        raise GraphQLError(f"Long must be an integer 0-{_TS_MAX}")
    return _long(int(node.value))


def _no_input(value: Any) -> Any:
    raise GraphQLError("JSON is an output type here")


_SCALARS: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        description="An integer of up to 53 bits (epoch milliseconds, seq, crc)",
        serialize=int,
        parse_value=_long,
        parse_literal=_long_literal,
    ),
    JSON: strawberry.scalar(
        name="JSON",
        description="A protocol message, exactly as the WebSocket protocol sends it",
        serialize=lambda v: v,
        parse_value=_no_input,
    ),
}

# -- types -------------------------------------------------------------------------------

MarketMessageOf = Snapshot | Delta


def _kind(m: MarketMessageOf, raw: bytes) -> object:
    return "snapshot" if isinstance(m, Snapshot) else "delta"


#: Each field of ``MarketMessage`` (its GraphQL name) and how it is read from a market
#: message and its wire JSON: one table for the queries and the subscriptions' ``next``.
MESSAGE_FIELDS: dict[str, Callable[[MarketMessageOf, bytes], object]] = {
    "type": _kind,
    "marketId": lambda m, raw: m.market_id,
    "eventId": lambda m, raw: m.event_id,
    "epoch": lambda m, raw: m.epoch,
    "seq": lambda m, raw: m.seq,
    "ts": lambda m, raw: m.ts,
    "crc": lambda m, raw: m.crc,
    "reset": lambda m, raw: isinstance(m, Snapshot) and m.reset,
    "conflated": lambda m, raw: isinstance(m, Snapshot) and m.conflated,
    "message": lambda m, raw: msgspec.Raw(raw),
}


@strawberry.type(description="One snapshot or delta of a market (docs/protocol.md)")
class MarketMessage:
    type: str
    market_id: strawberry.ID
    event_id: strawberry.ID
    epoch: str
    seq: Long
    ts: Long
    crc: Long | None
    reset: bool
    conflated: bool
    message: JSON

    @classmethod
    def of(cls, m: MarketMessageOf) -> MarketMessage:
        raw = protocol.encode(m)
        values: dict[str, Any] = {_snake(k): read(m, raw) for k, read in MESSAGE_FIELDS.items()}
        return cls(**values)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@strawberry.type
class MarketHistory:
    market_id: strawberry.ID
    book: MarketMessage | None
    changes: list[MarketMessage]
    next: str | None


@strawberry.type
class Result:
    market_id: strawberry.ID
    epoch: str
    seq: Long
    selection_id: strawberry.ID
    event_id: strawberry.ID
    ts: Long
    status: str | None
    dead_heat: str | None
    void_factor: str | None
    rollback: bool

    @classmethod
    def of(cls, r: ResultRow) -> Result:
        return cls(**{k: getattr(r, k) for k in r.__struct_fields__})


@strawberry.type
class ResultsPage:
    results: list[Result]
    next: str | None


@strawberry.type
class Event:
    event_id: strawberry.ID
    seq: Long
    ts: Long
    sport: str
    competition: str
    name: str
    home: str
    away: str
    start_time: Long
    phase: str
    score: list[int]

    @classmethod
    def of(cls, e: EventState) -> Event:
        fields = {k: getattr(e, k) for k in e.__struct_fields__ if k != "clock"}
        return cls(**{**fields, "score": list(e.score)})


@strawberry.type
class Market:
    market_id: strawberry.ID
    event_id: strawberry.ID
    sport: str
    kind: str
    name: str
    status: str
    main: bool
    seq: Long
    epoch: str
    ts: Long

    @classmethod
    def of(cls, s: MarketSummary) -> Market:
        return cls(**{k: getattr(s, k) for k in s.__struct_fields__})


# -- resolvers ---------------------------------------------------------------------------


def _request(info: strawberry.Info) -> Request:
    request: Request = info.context
    return request


async def _authorized(info: strawberry.Info, query: StreamQuery) -> None:
    await _refusing(authorized(_request(info), query))


def _history(info: strawberry.Info) -> HistorySource:
    history: HistorySource | None = _request(info).app.state.history
    if history is None:
        raise QueryFailure("unavailable", "this gateway has no archive (--mysql)")
    return history


def _name(value: str, what: str) -> str:
    if not value or len(value) > min(MAX_PARAM, MAX_NAME_CHARS):
        raise QueryFailure("bad_request", f"`{what}` must be 1-{MAX_NAME_CHARS} characters")
    return value


def _page(limit: int, cursor: str | None) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise QueryFailure("bad_request", f"`limit` must be 1-{MAX_PAGE}")
    if cursor is not None and len(cursor) > MAX_PARAM:
        raise QueryFailure("bad_request", "`cursor` is too long")


def _window(start: int, end: int) -> None:
    if end < start or end - start > MAX_WINDOW_MS:
        raise QueryFailure(
            "bad_request", f"`to` must be >= `from` and at most {MAX_WINDOW_MS} ms after it"
        )


async def _refusing(answer: Awaitable[T]) -> T:
    """``answer``'s value; a refusal of the live API or of the archive as a
    :class:`QueryFailure` with its code."""
    try:
        return await answer
    except (ProtocolError, QueryError) as exc:
        raise QueryFailure(exc.code, exc.message) from None


@strawberry.type
class Query:
    @strawberry.field(description="The live events the caller may follow something of")
    async def events(self, info: strawberry.Info, sport: str | None = None) -> list[Event]:
        wanted = None if sport is None else _name(sport, "sport")
        return [Event.of(e) for e in await _refusing(visible_events(_request(info), wanted))]

    @strawberry.field(description="A live event")
    async def event(self, info: strawberry.Info, id: strawberry.ID) -> Event | None:
        event_id = _name(id, "id")
        await _authorized(info, StreamQuery((), (event_id,), (), None))
        state = await _request(info).app.state.gateway.store.event(event_id)
        return None if state is None else Event.of(state)

    @strawberry.field(description="The live markets the caller may follow")
    async def markets(
        self, info: strawberry.Info, event_id: strawberry.ID | None = None
    ) -> list[Market]:
        wanted = None if event_id is None else _name(event_id, "eventId")
        summaries = await _refusing(visible_markets(_request(info), wanted))
        return [Market.of(s) for s in summaries]

    @strawberry.field(description="A market's live book (a snapshot)")
    async def market(self, info: strawberry.Info, id: strawberry.ID) -> MarketMessage | None:
        market_id = _name(id, "id")
        await _authorized(info, StreamQuery((market_id,), (), (), None))
        gateway = _request(info).app.state.gateway
        book = gateway.relay.current(market_id) or await gateway.store.snapshot(market_id)
        return None if book is None else MarketMessage.of(book)

    @strawberry.field(description="A market's book at `from` and its messages up to `to`")
    async def market_history(
        self,
        info: strawberry.Info,
        market_id: strawberry.ID,
        from_: Annotated[Long, strawberry.argument(name="from")],
        to: Long,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> MarketHistory:
        market = _name(market_id, "marketId")
        _window(from_, to)
        _page(limit, cursor)
        await _authorized(info, StreamQuery((market,), (), (), None))
        page = await _refusing(
            _history(info).market_history(market, from_, to, limit=limit, cursor=cursor)
        )
        return MarketHistory(
            market_id=strawberry.ID(page.market_id),
            book=None if page.book is None else MarketMessage.of(page.book),
            changes=[MarketMessage.of(m) for m in page.changes],
            next=page.next,
        )

    @strawberry.field(description="An event's result rows, oldest first")
    async def event_results(
        self,
        info: strawberry.Info,
        event_id: strawberry.ID,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> ResultsPage:
        event = _name(event_id, "eventId")
        _page(limit, cursor)
        await _authorized(info, StreamQuery((), (event,), (), None))
        return _results(
            await _refusing(_history(info).event_results(event, limit=limit, cursor=cursor))
        )

    @strawberry.field(description="A sport's result rows between two instants")
    async def results(
        self,
        info: strawberry.Info,
        sport: str,
        from_: Annotated[Long, strawberry.argument(name="from")],
        to: Long,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> ResultsPage:
        sport = _name(sport, "sport")
        _window(from_, to)
        _page(limit, cursor)
        await _authorized(info, StreamQuery((), (), (sport,), None))
        return _results(
            await _refusing(_history(info).results(sport, from_, to, limit=limit, cursor=cursor))
        )


def _results(page: Any) -> ResultsPage:
    return ResultsPage(results=[Result.of(r) for r in page.results], next=page.next)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A market's snapshot, then every delta (over graphql-transport-ws)"
    )
    def market(self, id: strawberry.ID) -> AsyncIterator[MarketMessage]:
        # Never run: server.graphql_ws delivers subscriptions from the hub.
        raise QueryFailure("bad_request", "subscribe over graphql-transport-ws")


SCHEMA = strawberry.Schema(
    Query, subscription=Subscription, config=StrawberryConfig(scalar_map=_SCALARS)
)
CORE_SCHEMA = SCHEMA._schema  # graphql-core's schema: parse, validate and execute run on it.

# -- preparing a document ------------------------------------------------------------------


class GraphQLRequest(msgspec.Struct, frozen=True, rename="camel"):
    """A GraphQL-over-HTTP request body (and a subscription's ``payload``)."""

    query: str | None = None
    variables: dict[str, Any] | None = None
    operation_name: str | None = None
    extensions: dict[str, Any] | None = None


_decode_request = msgspec.json.Decoder(GraphQLRequest).decode


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document that passed every bound and validated; ``variables`` coerced."""

    document: DocumentNode
    operation: OperationDefinitionNode
    variables: VariableValues
    request: GraphQLRequest


def load_persisted(path: str) -> dict[str, str]:
    """The persisted documents of ``path`` (a JSON object: SHA-256 hex -> document).
    Raises :class:`SettingsError` when the file is unreadable or a key is not its
    document's hash."""
    if not path:
        return {}
    try:
        documents = msgspec.json.decode(Path(path).read_bytes(), type=dict[str, str])
    except (OSError, msgspec.DecodeError) as exc:
        raise SettingsError(f"graphql_persisted: cannot read {path}: {exc}") from None
    for key, document in documents.items():
        if hashlib.sha256(document.encode()).hexdigest() != key:
            raise SettingsError(f"graphql_persisted: {key} is not the SHA-256 of its document")
    return documents


class Documents:
    """The bounds and the persisted documents of one gateway (its :class:`Settings`)."""

    def __init__(self, settings: Settings):
        self.max_chars = settings.graphql_max_chars
        self.max_depth = settings.graphql_max_depth
        self.max_fields = settings.graphql_max_fields
        self.persisted_only = settings.graphql_accept == "persisted"
        self.persisted = load_persisted(settings.graphql_persisted)

    def decode(self, body: bytes) -> GraphQLRequest:
        """A request body (JSON). Raises :class:`RequestError` (``bad_request``)."""
        try:
            return _decode_request(body)
        except (msgspec.DecodeError, RecursionError) as exc:  # Nested past the decoder's bound.
            raise RequestError("bad_request", f"not a GraphQL request: {exc}") from None

    def prepare(self, request: GraphQLRequest, kind: str) -> Prepared:
        """Bound, parse and validate ``request``'s document for an operation of ``kind``
        (``query``, ``subscription``), and coerce its variables. Raises
        :class:`RequestError`."""
        source = self._source(request)
        if len(source) > self.max_chars:
            raise RequestError("too_large", f"a document has at most {self.max_chars} characters")
        try:
            document = graphql.parse(source, max_tokens=self.max_chars)
        except GraphQLError as exc:
            raise RequestError("graphql_parse_failed", exc.message) from None
        self._bound(document)
        errors = graphql.validate(CORE_SCHEMA, document, max_errors=10)
        if errors:
            raise RequestError("graphql_validation_failed", errors[0].message)
        operation = graphql.get_operation_ast(document, request.operation_name)
        if operation is None:
            raise RequestError("bad_request", "name one operation of the document")
        if operation.operation.value != kind:
            raise RequestError("bad_request", f"this endpoint runs {kind} operations only")
        coerced = get_variable_values(
            CORE_SCHEMA,
            operation.variable_definitions or (),
            request.variables or {},
            max_errors=10,
        )
        if isinstance(coerced, list):
            raise RequestError("bad_request", coerced[0].message)
        return Prepared(document, operation, coerced, request)

    def _source(self, request: GraphQLRequest) -> str:
        persisted = (request.extensions or {}).get("persistedQuery")
        if isinstance(persisted, Mapping):
            key = persisted.get("sha256Hash")
            document = self.persisted.get(key) if isinstance(key, str) else None
            if document is None:
                raise RequestError("PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")
            return document
        if self.persisted_only:
            raise RequestError("forbidden", "this gateway runs persisted queries only")
        if not isinstance(request.query, str) or not request.query:
            raise RequestError("bad_request", "give `query` (or a persisted query's hash)")
        return request.query

    def _bound(self, document: DocumentNode) -> None:
        """Depth and fields (and fragment spreads) of every operation, fragments
        expanded where spread; stops at the first bound passed, so the work is bounded
        by the limits, not by what the fragments would expand to."""
        fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        stack: list[tuple[SelectionSetNode, int, frozenset[str]]] = [
            (d.selection_set, 1, frozenset())
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        ]
        fields = 0
        while stack:
            selections, depth, spread = stack.pop()
            for node in selections.selections:
                if isinstance(node, InlineFragmentNode):
                    stack.append((node.selection_set, depth, spread))
                    continue
                fields += 1
                if fields > self.max_fields:
                    raise RequestError(
                        "too_complex", f"at most {self.max_fields} fields and fragment spreads"
                    )
                if isinstance(node, FieldNode):
                    if depth > self.max_depth:
                        raise RequestError("too_deep", f"at most {self.max_depth} levels")
                    if node.selection_set is not None:
                        stack.append((node.selection_set, depth + 1, spread))
                elif isinstance(node, FragmentSpreadNode):
                    name = node.name.value
                    fragment = fragments.get(name)
                    if fragment is not None and name not in spread:  # Else validation says.
                        stack.append((fragment.selection_set, depth, spread | {name}))


def error_entry(error: GraphQLError) -> dict[str, Any]:
    """An ``errors`` entry the client may see: a :class:`QueryFailure` or graphql-core's
    own error (a document or a variable) as it is; anything else is logged and masked."""
    original = error.original_error
    if original is not None and not isinstance(original, GraphQLError):
        log.error("GraphQL resolver failed at %s", error.path, exc_info=original)
        return {"message": "internal error", "path": error.path, "extensions": {"code": "internal"}}
    entry = error.formatted
    code = (error.extensions or {}).get("code", "graphql_validation_failed")
    return {**entry, "extensions": {**entry.get("extensions", {}), "code": code}}


def request_error(exc: RequestError) -> dict[str, Any]:
    return {"message": exc.message, "extensions": {"code": exc.code}}


# -- the HTTP route ------------------------------------------------------------------------

_encoder = msgspec.json.Encoder(decimal_format="string")


def _answer(payload: Mapping[str, Any], status: int = 200) -> Response:
    return Response(_encoder.encode(payload), status, media_type="application/json")


def _from_query_string(request: Request) -> GraphQLRequest:
    params = request.query_params

    def json_param(name: str) -> dict[str, Any] | None:
        raw = params.get(name)
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=dict[str, Any])
        except (msgspec.DecodeError, RecursionError):
            raise RequestError("bad_request", f"`{name}` must be a JSON object") from None

    return GraphQLRequest(
        query=params.get("query"),
        variables=json_param("variables"),
        operation_name=params.get("operationName"),
        extensions=json_param("extensions"),
    )


async def endpoint(request: Request) -> Response:
    """``GET /graphql?query=`` and ``POST /graphql`` (JSON): run a query."""
    documents: Documents = request.app.state.graphql
    try:
        if request.method == "POST":
            if request.headers.get("content-type", "").split(";")[0].strip() != (
                "application/json"
            ):
                raise RequestError("bad_request", "send Content-Type: application/json")
            query = documents.decode(await request.body())
        else:
            query = _from_query_string(request)
        prepared = documents.prepare(query, "query")
    except RequestError as exc:
        return _answer({"errors": [request_error(exc)]}, 400)
    outcome = graphql.execute(
        CORE_SCHEMA,
        prepared.document,
        context_value=request,
        variable_values=query.variables,
        operation_name=query.operation_name,
    )
    result = await outcome if isawaitable(outcome) else outcome  # Async resolvers: awaitable.
    answer: dict[str, Any] = {"data": result.data}
    if result.errors:
        answer["errors"] = [error_entry(e) for e in result.errors]
    return _answer(answer)


if __name__ == "__main__":
    sys.stdout.write(SCHEMA.as_str() + "\n")
