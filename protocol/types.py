"""Domain and wire types of the oddstream protocol (``oddstream.v1``).

Every server-to-client message is a JSON object tagged by ``type``; every client command
likewise. These Structs are the single source of truth: the JSON Schema and AsyncAPI
documents in ``docs/`` are generated from them (``python -m protocol.schema``).

Prices are :class:`decimal.Decimal` and travel as JSON strings (``"2.10"``), so a price
round-trips exactly between feed, server and screen: no binary-float drift.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

MarketStatus = Literal["open", "suspended", "closed", "settled", "voided"]
SelectionStatus = Literal["active", "removed", "winner", "loser", "void"]
EventPhase = Literal["pre", "live", "ended"]

#: Market states after which no price or status may change again.
FINAL_MARKET_STATES: frozenset[str] = frozenset({"settled", "voided"})


#: One level of an exchange ladder: ``(price, size)``, both exact decimals (strings on
#: the wire). ``size`` is the amount available at ``price``, in the market's currency.
Level = tuple[Decimal, Decimal]


class SelectionFields(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a feed gives of a selection (``feeds.model.FeedSelection``) and a book holds
    of it (:class:`Selection`, where each field is described), in this order."""

    selection_id: str
    name: str
    price: Decimal | None = None
    status: SelectionStatus = "active"
    back: tuple[Level, ...] = ()
    lay: tuple[Level, ...] = ()
    ltp: Decimal | None = None
    volume: Decimal | None = None
    bsp: Decimal | None = None
    adjustment: Decimal | None = None
    removed_at: int | None = None


class Selection(SelectionFields, frozen=True, omit_defaults=True):
    """One outcome of a market, in full.

    ``price`` is the price a board shows: the bookmaker's price, or on an exchange the
    best price available to back. The other fields are optional market data, absent
    when the feed does not give them (see ``docs/feeds.md``):

    - ``back`` / ``lay``: the best levels available to back / to lay, best first
      (highest back price, lowest lay price), at most :data:`LADDER_DEPTH` levels;
    - ``ltp``: last traded price; ``volume``: traded volume on the selection;
    - ``bsp``: Betfair starting price, once reconciled;
    - ``adjustment``: the reduction factor (percent) applied to other selections'
      prices when this one is removed; ``removed_at``: when it was removed (ms);
    - ``dead_heat``: dead-heat factor of a winner (0.5: half the stake wins);
      ``void_factor``: part of the stake refunded (0.5: half void, half settled).
    """

    dead_heat: Decimal | None = None
    void_factor: Decimal | None = None


#: Levels of each side a selection carries in ``back`` and ``lay``.
LADDER_DEPTH = 3


class SelectionChange(msgspec.Struct, frozen=True, omit_defaults=True):
    """The fields of one selection that changed; absent fields are unchanged.

    A selection the client has never seen arrives with ``name`` set: it is added.
    ``price`` (or any other optional field) set to ``null`` means the selection has no
    value for it any more; ``back``/``lay`` are replaced whole (``[]``: no levels).
    """

    selection_id: str
    name: str | UnsetType = UNSET
    price: Decimal | UnsetType | None = UNSET
    status: SelectionStatus | UnsetType = UNSET
    back: tuple[Level, ...] | UnsetType = UNSET
    lay: tuple[Level, ...] | UnsetType = UNSET
    ltp: Decimal | UnsetType | None = UNSET
    volume: Decimal | UnsetType | None = UNSET
    bsp: Decimal | UnsetType | None = UNSET
    adjustment: Decimal | UnsetType | None = UNSET
    removed_at: int | UnsetType | None = UNSET
    dead_heat: Decimal | UnsetType | None = UNSET
    void_factor: Decimal | UnsetType | None = UNSET


#: The fields of :class:`Selection` that :class:`SelectionChange` may carry, in order:
#: what a delta compares and what ``apply`` merges (every field but ``selection_id``).
SELECTION_FIELDS: tuple[str, ...] = Selection.__struct_fields__[1:]
if SelectionChange.__struct_fields__[1:] != SELECTION_FIELDS:  # pragma: no cover - a model edit
    raise ImportError("SelectionChange must carry Selection's fields, in Selection's order")


class Clock(msgspec.Struct, frozen=True, omit_defaults=True):
    """Match clock as the feed last reported it."""

    period: str
    seconds: int = 0
    running: bool = False


# ---------------------------------------------------------------------------
# Server -> client messages
# ---------------------------------------------------------------------------


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot", tag_field="type", omit_defaults=True):
    """The full book of one market at ``seq`` within ``epoch``.

    ``ts`` is the feed timestamp (epoch milliseconds) of the last update the book reflects.
    ``reset`` is true when the snapshot replaces a stream the client could not resume
    (history gone, epoch changed, gap): the client must drop what it had for this market.
    ``volume`` is the market's traded volume, when the feed gives one (an exchange).
    ``conflated`` is true when the snapshot stands in for updates merged because the
    client fell behind or asked for ``conflate_ms``: exact at ``seq``, it replaces the book
    like any snapshot. ``crc``, when present, is the book checksum of ``selections`` and
    ``status`` (:mod:`protocol.checksum`, ``docs/protocol.md``).
    """

    market_id: str
    event_id: str
    seq: int
    epoch: str
    ts: int
    sport: str
    kind: str
    name: str
    status: MarketStatus
    selections: tuple[Selection, ...]
    main: bool = False
    reason: str | None = None
    reset: bool = False
    volume: Decimal | None = None
    conflated: bool = False
    crc: int | None = None


class Delta(msgspec.Struct, frozen=True, tag="delta", tag_field="type", omit_defaults=True):
    """The minimal change taking a market from ``seq - 1`` to ``seq`` within ``epoch``.

    ``status`` and ``reason`` are present only when they changed; ``selections`` lists
    only the selections that changed, with only their changed fields; ``name`` and
    ``main`` (in the sport's lobby or not) appear only when the feed redefined them;
    ``volume`` only when the market's traded volume changed (``null``: none any more).
    ``crc``, when present, is the book checksum of the book *after* this delta
    (:mod:`protocol.checksum`): a client whose book gives another value takes a fresh
    snapshot.
    """

    market_id: str
    event_id: str
    seq: int
    epoch: str
    ts: int
    status: MarketStatus | UnsetType = UNSET
    reason: str | UnsetType | None = UNSET
    selections: tuple[SelectionChange, ...] = ()
    name: str | UnsetType = UNSET
    main: bool | UnsetType = UNSET
    volume: Decimal | UnsetType | None = UNSET
    crc: int | None = None


class EventState(msgspec.Struct, frozen=True, tag="event", tag_field="type", omit_defaults=True):
    """Full state of a match; each message replaces the previous one (``seq`` per event).

    Event messages are small and idempotent, so they need no history: the latest wins.
    """

    event_id: str
    seq: int
    ts: int
    sport: str
    competition: str
    name: str
    home: str
    away: str
    start_time: int
    phase: EventPhase
    score: tuple[int, int] = (0, 0)
    clock: Clock | None = None


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", tag_field="type"):
    """Sent when the connection has been quiet for the heartbeat interval."""

    ts: int


class Ack(msgspec.Struct, frozen=True, tag="ack", tag_field="type", omit_defaults=True):
    """A command succeeded. ``id`` echoes the command's ``id``."""

    command: str
    id: str | int | None = None
    markets: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    lobbies: tuple[str, ...] = ()


class Error(msgspec.Struct, frozen=True, tag="error", tag_field="type", omit_defaults=True):
    """A command failed; the connection stays open. ``code`` is machine-readable."""

    code: str
    message: str
    id: str | int | None = None


class Reconnect(msgspec.Struct, frozen=True, tag="reconnect", tag_field="type", omit_defaults=True):
    """The server is going away (drain): reconnect, to any gateway, after ``after_ms``
    (a per-client jitter, so a fleet does not reconnect at once), and ``resume`` from
    ``positions``: where each of the connection's markets stands in what was sent."""

    reason: str
    after_ms: int = 0
    positions: tuple[Position, ...] = ()


ServerMessage = Snapshot | Delta | EventState | Heartbeat | Ack | Error | Reconnect
MarketMessage = Snapshot | Delta


# ---------------------------------------------------------------------------
# Client -> server commands
# ---------------------------------------------------------------------------

# Shape limits of what a client sends, checked while decoding (docs/protocol.md#limits):
# nothing a command names can be longer or more numerous than these, whatever the frame
# size. The gateway's own settings (subscriptions per connection, markets per resume) are
# checked after, by the session.

#: Longest market id, event id, sport, epoch or command ``id`` (characters).
MAX_NAME_CHARS = 256
#: Most names in one list of a command (``markets``, ``events``, ``lobbies``, ``positions``).
MAX_NAMES = 5_000
#: Longest resume token or access token a command may carry (characters).
MAX_TOKEN_CHARS = 16_384
#: Largest ``seq`` (2^53 - 1: exact in every JSON implementation).
MAX_SEQ = (1 << 53) - 1

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_NAMES)]
CommandId = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)] | int | None
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_CHARS)]
ConflateMs = Annotated[int, msgspec.Meta(ge=0)] | None


class Subscribe(msgspec.Struct, frozen=True, tag="subscribe", tag_field="type", omit_defaults=True):
    """Subscribe to markets, to every market of events, and/or to sports' lobbies of main
    markets. The server answers ``ack``, then a snapshot per market, then deltas.
    ``conflate_ms`` (0-60000) asks for at most one update per market per interval, for the
    whole connection."""

    markets: Names = ()
    events: Names = ()
    lobbies: Names = ()
    id: CommandId = None
    conflate_ms: ConflateMs = None


class Unsubscribe(
    msgspec.Struct, frozen=True, tag="unsubscribe", tag_field="type", omit_defaults=True
):
    """Stop receiving the named markets, events and lobbies."""

    markets: Names = ()
    events: Names = ()
    lobbies: Names = ()
    id: CommandId = None


class Position(msgspec.Struct, frozen=True):
    """Where a client's copy of a market stands: the last ``seq`` it applied in ``epoch``."""

    market_id: Name
    epoch: Name
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]


class Resume(msgspec.Struct, frozen=True, tag="resume", tag_field="type", omit_defaults=True):
    """Resubscribe after a reconnect. For each position the server sends exactly the
    deltas after it when they are still in history, else a snapshot with ``reset``.
    ``token`` (a REST ``X-Oddstream-Token`` or an SSE ``id:``) adds the positions it
    holds (send ``positions: []`` with it); explicit ``positions`` win. ``conflate_ms``
    as on ``subscribe``."""

    positions: Annotated[tuple[Position, ...], msgspec.Meta(max_length=MAX_NAMES)]
    events: Names = ()
    lobbies: Names = ()
    id: CommandId = None
    token: Token | None = None
    conflate_ms: ConflateMs = None


class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type", omit_defaults=True):
    """Liveness probe; answered by ``ack``."""

    id: CommandId = None


class Auth(msgspec.Struct, frozen=True, tag="auth", tag_field="type", omit_defaults=True):
    """Authenticate the connection with an access token (a JWT, see ``docs/auth.md``):
    answered by ``ack``; the channels the token grants may be followed from then on.
    Send it first. A token that does not verify is answered by ``error``
    (``token_invalid`` or ``token_expired``) and the connection is closed with ``4102``."""

    token: Token
    id: CommandId = None


class Refresh(msgspec.Struct, frozen=True, tag="refresh", tag_field="type", omit_defaults=True):
    """Replace the connection's access token with a newer one before it expires, keeping
    every subscription: answered by ``ack``, or ``error`` (the old token stays in force
    until its own expiry)."""

    token: Token
    id: CommandId = None


ClientCommand = Subscribe | Unsubscribe | Resume | Ping | Auth | Refresh

__all__ = [
    "FINAL_MARKET_STATES",
    "LADDER_DEPTH",
    "MAX_NAMES",
    "MAX_NAME_CHARS",
    "MAX_SEQ",
    "MAX_TOKEN_CHARS",
    "SELECTION_FIELDS",
    "UNSET",
    "Ack",
    "Auth",
    "ClientCommand",
    "Clock",
    "Delta",
    "Error",
    "EventPhase",
    "EventState",
    "Heartbeat",
    "Level",
    "MarketMessage",
    "MarketStatus",
    "Ping",
    "Position",
    "Reconnect",
    "Refresh",
    "Resume",
    "Selection",
    "SelectionChange",
    "SelectionFields",
    "SelectionStatus",
    "ServerMessage",
    "Snapshot",
    "Subscribe",
    "UnsetType",
    "Unsubscribe",
]
