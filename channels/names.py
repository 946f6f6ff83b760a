"""Channel names on the broker. A delta is published on its market's channel, its event's
channel and, for a main market, its sport's lobby channel; event state goes on the event
and lobby channels."""

from __future__ import annotations


def market_channel(market_id: str) -> str:
    return f"m:{market_id}"


def event_channel(event_id: str) -> str:
    return f"e:{event_id}"


def lobby_channel(sport: str) -> str:
    return f"l:{sport}"


def channels_for_market(market_id: str, event_id: str, sport: str, main: bool) -> tuple[str, ...]:
    """Every channel a message about this market is published on."""
    if main:
        return (market_channel(market_id), event_channel(event_id), lobby_channel(sport))
    return (market_channel(market_id), event_channel(event_id))


def channels_for_event(event_id: str, sport: str) -> tuple[str, ...]:
    """Every channel an event state message is published on."""
    return (event_channel(event_id), lobby_channel(sport))


def owner_beat_channel() -> str:
    """The channel of the book processors' owner beats (:mod:`channels.liveness`)."""
    return "o:beat"
