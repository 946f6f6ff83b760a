"""GraphQL subscriptions over ``graphql-transport-ws`` (``docs/graphql.md``).

The edge (:mod:`server.listener`) hands a ``/graphql`` upgrade to
:class:`GraphQLWsConnection` after the same checks as ``/ws`` (Origin, caps,
admission). It is a :class:`~server.ws.WebSocketConnection` (handshake, frames, UTF-8,
size bound, flow control, outbox, slow-client closes) speaking another message protocol:

* ``connection_init`` (within ``graphql_init_timeout_s``, else 4408) opens the
  connection's :class:`~server.session.Session` with the credentials of its payload
  (``authorization``) or of the upgrade's ``Authorization`` header, and is answered
  ``connection_ack``; a second one closes 4429;
* ``subscribe`` is bounded and validated like a query (:class:`server.graphql.Documents`),
  its one root field ``market(id:)`` becomes the session's ``subscribe`` command (so
  rights, quotas, the rate limit and the snapshot-then-deltas order are the WebSocket
  protocol's own), and each market message the hub fans out becomes a ``next`` holding
  the fields the document selected;
* ``complete`` is the session's ``unsubscribe``; ``ping`` is answered ``pong``; the
  gateway's heartbeat goes out as ``ping``.

Every session command answers one ``ack`` or ``error``, in order: :attr:`_pending`
pairs them with the subscriptions that asked, so a refusal (``forbidden``,
``unknown_market``, ``rate_limited``...) becomes that subscription's ``error``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from dataclasses import dataclass
from typing import Any

import msgspec
from graphql import FieldNode, GraphQLError
from graphql.execution.values import get_argument_values
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

import protocol
from channels.frame import OP_TEXT, Frame, ws_frame
from protocol import Ack, CloseCode, Delta, Error, Heartbeat, Snapshot
from protocol.types import MAX_NAME_CHARS
from server.admission import Ticket
from server.graphql import (
    CORE_SCHEMA,
    MESSAGE_FIELDS,
    Documents,
    GraphQLRequest,
    RequestError,
    request_error,
)
from server.session import ConnectionInfo
from server.settings import Settings
from server.streams import Streams
from server.ws import WebSocketConnection

SUBPROTOCOL = "graphql-transport-ws"

#: graphql-transport-ws close codes.
BAD_REQUEST = 4400
UNAUTHORIZED = 4401
NOT_ACCEPTABLE = 4406
INIT_TIMEOUT = 4408
DUPLICATE_ID = 4409
TOO_MANY_INITS = 4429

_ACK = ws_frame(OP_TEXT, b'{"type":"connection_ack"}')
_PING = ws_frame(OP_TEXT, b'{"type":"ping"}')
_PONG = ws_frame(OP_TEXT, b'{"type":"pong"}')


class _Message(msgspec.Struct, frozen=True):
    type: str
    id: str | None = None
    payload: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.Encoder(decimal_format="string").encode


@functools.cache
def documents_of(settings: Settings) -> Documents:
    """The gateway's document bounds and persisted queries (loaded once)."""
    return Documents(settings)


#: ``data`` of a ``next`` by (frame, shape), for subscriptions selecting the same fields
#: of the same message (encode once per shape, not per client); bounded, the frame kept
#: so an ``id`` reused after it is gone never matches.
_DATA: dict[tuple[int, tuple[str, ...]], tuple[Frame, bytes]] = {}
_DATA_KEPT = 4_096


@dataclass(slots=True)
class _Subscription:
    """One ``subscribe``: its market and the ``next`` it makes of a market message."""

    id: str
    market_id: str
    head: bytes  # {"id":...,"type":"next","payload":{"data":
    shape: tuple[str, ...]  # The root's response key, then (key, field) pairs, flat.

    def next(self, frame: Frame) -> bytes:
        key = (id(frame), self.shape)
        cached = _DATA.get(key)
        if cached is not None and cached[0] is frame:
            data = cached[1]
        else:
            data = _data(frame, self.shape)
            if len(_DATA) >= _DATA_KEPT:
                _DATA.clear()  # Bounded; a miss only costs an encode.
            _DATA[key] = (frame, data)
        return ws_frame(OP_TEXT, self.head + data + b"}}")


def _data(frame: Frame, shape: tuple[str, ...]) -> bytes:
    """``{"<root key>":{<selected fields>}}`` of a market message."""
    message = frame.message
    assert isinstance(message, Snapshot | Delta)
    pairs = zip(shape[1::2], shape[2::2], strict=True)
    values = {
        key: "MarketMessage" if name == "__typename" else MESSAGE_FIELDS[name](message, frame.json)
        for key, name in pairs
    }
    return _encode({shape[0]: values})


def _select_subprotocol(protocol: ServerProtocol, offered: Any) -> Any:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class GraphQLWsConnection(WebSocketConnection):
    """One ``graphql-transport-ws`` client (see the module doc)."""

    def __init__(self, streams: Streams, ticket: Ticket | None = None):
        super().__init__(streams, ticket)
        settings = self.gateway.settings
        self._ws = ServerProtocol(
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=_select_subprotocol,
            max_size=settings.max_frame_bytes,
        )
        self._documents = documents_of(settings)
        self._header_auth: str | None = None
        self._origin: str | None = None
        self._subs: dict[str, _Subscription] = {}
        self._by_market: dict[str, _Subscription] = {}
        # The subscription id of each session command not yet answered, in order.
        self._pending: collections.deque[str] = collections.deque()

    # -- handshake and connection_init -------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        response = ws.accept(request)
        ws.send_response(response)
        if ws.state is not State.OPEN:
            return
        if response.headers.get("Sec-WebSocket-Protocol") != SUBPROTOCOL:
            self._close(NOT_ACCEPTABLE, f"offer the subprotocol {SUBPROTOCOL}")
            return
        if self.gateway.draining:
            self._close(CloseCode.GOING_AWAY, "draining; reconnect elsewhere")
            return
        self._header_auth = request.headers.get("Authorization")
        self._origin = request.headers.get("Origin")
        timeout = self.gateway.settings.graphql_init_timeout_s
        self._idle = asyncio.get_running_loop().call_later(timeout, self._no_command)

    def _no_command(self) -> None:
        self._idle = None
        self.gateway.stats.protocol_errors += 1
        self._close(INIT_TIMEOUT, "Connection initialisation timeout")

    def _command(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            message = _decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # Nested past the bound.
            self._refuse(BAD_REQUEST, f"invalid message: {exc}")
            return
        if message.type == "connection_init":
            self._init(message)
        elif self.session is None:
            if message.type == "subscribe":
                self._refuse(UNAUTHORIZED, "Unauthorized")
            elif message.type == "ping":
                self._send([_PONG])
            elif message.type != "pong":
                self._refuse(BAD_REQUEST, "connection_init first")
        else:
            super()._command(data)  # In order, one at a time: handle().

    def _init(self, message: _Message) -> None:
        if self.session is not None:
            self._refuse(TOO_MANY_INITS, "Too many initialisation requests")
            return
        authorization = (message.payload or {}).get("authorization", self._header_auth)
        if authorization is not None and not isinstance(authorization, str):
            self._refuse(BAD_REQUEST, "payload.authorization must be a string")
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        info = ConnectionInfo(authorization=authorization, origin=self._origin)
        self.session = self.gateway.open_session(waker=self.wake, info=info)
        self._send([_ACK])

    # -- messages after connection_ack ---------------------------------------------------------

    async def handle(self, data: bytes) -> None:
        message = _decode(data)  # Decoded once already by _command: it is valid.
        kind, sub_id = message.type, message.id
        if kind == "ping":
            self._send([_PONG])
        elif kind == "pong":
            pass
        elif kind not in ("subscribe", "complete") or not _valid_id(sub_id):
            self._refuse(BAD_REQUEST, f"invalid message of type {kind!r}")
        elif kind == "complete":
            await self._complete(str(sub_id))
        elif sub_id in self._subs:
            self._refuse(DUPLICATE_ID, f"Subscriber for {sub_id} already exists")
        elif message.payload is None:
            self._refuse(BAD_REQUEST, "subscribe needs a payload")
        else:
            await self._subscribe(str(sub_id), message.payload)

    async def _subscribe(self, sub_id: str, payload: dict[str, Any]) -> None:
        try:
            sub = self._prepare(sub_id, payload)
        except RequestError as exc:
            self._send([_error(sub_id, request_error(exc))])
            return
        if sub.market_id in self._by_market:
            self._send(
                [_error(sub_id, _entry("invalid", f"{sub.market_id} is followed already here"))]
            )
            return
        self._subs[sub_id] = self._by_market[sub.market_id] = sub
        await self._run(sub_id, protocol.Subscribe(markets=(sub.market_id,), id=sub_id))

    def _prepare(self, sub_id: str, payload: dict[str, Any]) -> _Subscription:
        """The subscription a ``subscribe`` payload asks for. Raises :class:`RequestError`."""
        try:
            request = msgspec.convert(payload, GraphQLRequest)
        except msgspec.ValidationError as exc:
            raise RequestError("bad_request", f"not a GraphQL request: {exc}") from None
        prepared = self._documents.prepare(request, "subscription")
        (root,) = prepared.operation.selection_set.selections  # Validation: exactly one.
        assert isinstance(root, FieldNode)
        subscription = CORE_SCHEMA.subscription_type
        assert subscription is not None
        field = subscription.fields[root.name.value]
        try:
            market_id = get_argument_values(field, root, prepared.variables)["id"]
        except GraphQLError as exc:
            raise RequestError("bad_request", exc.message) from None
        shape = [(root.alias or root.name).value]
        for node in root.selection_set.selections if root.selection_set else ():
            if not isinstance(node, FieldNode) or node.directives:
                raise RequestError(
                    "bad_request", "a subscription selects MarketMessage fields directly"
                )
            key = (node.alias or node.name).value
            shape += [key, node.name.value]
        head = b'{"id":' + _encode(sub_id) + b',"type":"next","payload":{"data":'
        return _Subscription(sub_id, str(market_id), head, tuple(shape))

    async def _complete(self, sub_id: str) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return  # Completed already (or refused): nothing to stop.
        del self._by_market[sub.market_id]
        await self._run(sub_id, protocol.Unsubscribe(markets=(sub.market_id,), id=sub_id))

    async def _run(self, sub_id: str, command: protocol.Subscribe | protocol.Unsubscribe) -> None:
        """Hand ``command`` to the session, which rate-limits, authorises and runs it; its
        ``ack`` or ``error`` comes back through the outbox (:meth:`write`)."""
        assert self.session is not None
        self._pending.append(sub_id)
        await self.session.handle(msgspec.json.encode(command))

    # -- writing -------------------------------------------------------------------------------

    def write(self, frames: list[Frame]) -> None:
        out: list[bytes] = []
        for frame in frames:
            message = frame.message
            if isinstance(message, Snapshot | Delta):
                sub = self._by_market.get(message.market_id)
                if sub is not None:
                    out.append(sub.next(frame))
            elif isinstance(message, Ack | Error):
                sub_id = self._pending.popleft() if self._pending else None
                if isinstance(message, Error) and sub_id is not None:
                    self._refused(sub_id)
                    out.append(_error(sub_id, _entry(message.code, message.message)))
            elif isinstance(message, Heartbeat):
                out.append(_PING)
        self._send(out)

    def _refused(self, sub_id: str) -> None:
        """The session refused ``sub_id``'s command: a subscription it never started."""
        sub = self._subs.pop(sub_id, None)
        if sub is not None and self._by_market.get(sub.market_id) is sub:
            del self._by_market[sub.market_id]

    def _send(self, data: list[bytes]) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(data))

    def _refuse(self, code: int, reason: str) -> None:
        """A message the protocol calls invalid: close with ``code`` (a closing handshake
        with the reason; the socket is never just dropped)."""
        self.gateway.stats.protocol_errors += 1
        self._close(code, reason[:120])


def _valid_id(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= MAX_NAME_CHARS


def _entry(code: str, message: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def _error(sub_id: str, entry: dict[str, Any]) -> bytes:
    body = {"id": sub_id, "type": "error", "payload": [entry]}
    return ws_frame(OP_TEXT, _encode(body))
