"""The neutral feed model: what every feed adapter (synthetic, replay, Betfair, UOF)
translates its source into, and what travels on the Kafka feed topics.

Each message names its ``event_id`` (the Kafka key, so an event's messages share a
partition across the co-partitioned topics) and carries ``ts``, the feed's own timestamp
in epoch milliseconds, which flows through to every delta for end-to-end lag.

Topics (see :data:`TOPIC_OF`): ``markets`` carries event state, market definitions and
market status changes; ``odds`` carries selection prices; ``results`` carries settlement
and voids.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from protocol import Clock, EventPhase, MarketStatus, SelectionStatus


class FeedSelection(msgspec.Struct, frozen=True, omit_defaults=True):
    selection_id: str
    name: str
    price: Decimal | None = None
    status: SelectionStatus = "active"


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
    as it is (a feed drops a runner by sending it with status ``removed``).
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
    new status. A status-only change repeats the current price."""

    selection_id: str
    price: Decimal | None = None
    status: SelectionStatus | None = None


class FeedOdds(msgspec.Struct, frozen=True, tag="odds", tag_field="kind", omit_defaults=True):
    """New prices (and optionally selection statuses) for some selections of a market."""

    event_id: str
    market_id: str
    ts: int
    prices: tuple[FeedPrice, ...]


class FeedResult(msgspec.Struct, frozen=True, tag="result", tag_field="kind", omit_defaults=True):
    """Settlement (``results`` per selection: winner, loser or void), or a whole-market
    void when ``void`` is true."""

    event_id: str
    market_id: str
    ts: int
    results: tuple[tuple[str, SelectionStatus], ...] = ()
    void: bool = False
    reason: str | None = None


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
    return _decoder.decode(data)
