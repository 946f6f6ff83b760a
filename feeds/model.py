"""The neutral feed model: what every feed adapter (synthetic, replay, Betfair, UOF)
translates its source into, and what travels on the Kafka feed topics.

Each message names its ``event_id`` (the Kafka key, so an event's messages share a
partition across the co-partitioned topics) and carries ``ts``, the feed's own timestamp
in epoch milliseconds, which flows through to every delta for end-to-end lag.

Topics (see :data:`TOPIC_OF`): ``markets`` carries event state, market definitions and
market status changes; ``odds`` carries selection prices (and exchange market data);
``results`` carries settlements, voids and their rollbacks.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from protocol import Clock, EventPhase, MarketStatus, SelectionStatus
from protocol.types import Level, SelectionFields


class FeedSelection(SelectionFields, frozen=True, omit_defaults=True):
    """A selection's full state in a market definition: every field replaces the one
    the book holds (absent: none). The optional market data (``back``, ``lay``,
    ``ltp``, ``volume``, ``bsp``, ``adjustment``, ``removed_at``) has the meaning given
    on :class:`protocol.Selection`."""


class FeedEvent(msgspec.Struct, frozen=True, tag="event", tag_field="kind", omit_defaults=True):
    """Full state of a match: identity, phase, score and clock (replaces the previous)."""

    event_id: str
    ts: int
    sport: str
    competition: str
    home: str
    away: str
    start_time: int
    phase: EventPhase = "pre"
    score: tuple[int, int] = (0, 0)
    clock: Clock | None = None


class FeedMarket(msgspec.Struct, frozen=True, tag="market", tag_field="kind", omit_defaults=True):
    """A market definition: creates the market, or replaces its definition.

    Selections listed replace those known by id; a known selection not listed is kept
    as it is (a feed drops a runner by sending it with status ``removed``). ``volume``
    (the market's traded volume) replaces the book's likewise.
    """

    event_id: str
    market_id: str
    ts: int
    sport: str
    market_kind: str
    name: str
    selections: tuple[FeedSelection, ...]
    status: MarketStatus = "open"
    main: bool = False
    reason: str | None = None
    volume: Decimal | None = None


class FeedMarketStatus(
    msgspec.Struct, frozen=True, tag="status", tag_field="kind", omit_defaults=True
):
    """A market changes status (``suspended`` with a reason such as ``goal``, ``open``...)."""

    event_id: str
    market_id: str
    ts: int
    status: MarketStatus
    reason: str | None = None


class FeedPrice(msgspec.Struct, frozen=True, omit_defaults=True):
    """A selection's full new price (``None``: it has no price now) and, optionally, its
    new status. A status-only change repeats the current price.

    The optional market data fields are updates: absent (``UNSET``) leaves the book's
    value as it is, ``None`` (JSON ``null``) clears it, ``back``/``lay`` replace the
    levels whole. So a producer that knows nothing of them never disturbs them.
    """

    selection_id: str
    price: Decimal | None = None
    status: SelectionStatus | None = None
    back: tuple[Level, ...] | UnsetType = UNSET
    lay: tuple[Level, ...] | UnsetType = UNSET
    ltp: Decimal | UnsetType | None = UNSET
    volume: Decimal | UnsetType | None = UNSET
    bsp: Decimal | UnsetType | None = UNSET
    adjustment: Decimal | UnsetType | None = UNSET
    removed_at: int | UnsetType | None = UNSET


class FeedOdds(msgspec.Struct, frozen=True, tag="odds", tag_field="kind", omit_defaults=True):
    """New prices (and optionally selection statuses) for some selections of a market;
    ``volume``, when present, is the market's new traded volume."""

    event_id: str
    market_id: str
    ts: int
    prices: tuple[FeedPrice, ...]
    volume: Decimal | UnsetType | None = UNSET


class FeedResult(msgspec.Struct, frozen=True, tag="result", tag_field="kind", omit_defaults=True):
    """Settlement (``results`` per selection: winner, loser or void), a whole-market
    void when ``void`` is true, or the undo of either when ``rollback`` is true.

    ``dead_heat`` and ``void_factors`` give, per selection named in ``results``, the
    dead-heat factor of a winner and the part of the stake refunded (both in (0, 1]).

    A rollback names no results: it takes a settled or voided market back to
    ``suspended`` (reason ``rollback`` unless given), every selection with a result
    back to ``active`` with its last prices. It is an ordinary change with the next
    ``seq``; a market that is not settled or voided refuses it.
    """

    event_id: str
    market_id: str
    ts: int
    results: tuple[tuple[str, SelectionStatus], ...] = ()
    void: bool = False
    reason: str | None = None
    rollback: bool = False
    dead_heat: tuple[tuple[str, Decimal], ...] = ()
    void_factors: tuple[tuple[str, Decimal], ...] = ()


FeedMessage = FeedEvent | FeedMarket | FeedMarketStatus | FeedOdds | FeedResult

FeedTopic = Literal["markets", "odds", "results"]
FEED_TOPICS: tuple[FeedTopic, ...] = ("markets", "odds", "results")

TOPIC_OF: dict[type[FeedMessage], FeedTopic] = {
    FeedEvent: "markets",
    FeedMarket: "markets",
    FeedMarketStatus: "markets",
    FeedOdds: "odds",
    FeedResult: "results",
}

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder: msgspec.json.Decoder[FeedMessage] = msgspec.json.Decoder(FeedMessage)


def topic_of(message: FeedMessage) -> FeedTopic:
    """The feed topic a message belongs on."""
    return TOPIC_OF[type(message)]


def encode_feed(message: FeedMessage) -> bytes:
    """JSON bytes of a feed message (the value written to Kafka)."""
    return _encoder.encode(message)


def decode_feed(data: bytes | str) -> FeedMessage:
    """Decode a feed message. Raises :class:`msgspec.DecodeError` (including
    :class:`msgspec.ValidationError`) with a readable reason for the dead-letter topic."""
    try:
        return _decoder.decode(data)
    except UnicodeDecodeError as exc:  # Invalid UTF-8 inside a string: malformed too.
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None
