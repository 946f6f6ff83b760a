"""Every name the pub/sub seam uses, in one place.

*Channels* are what a gateway's clients are interested in (a market, an event, a sport
lobby): the relay's ``acquire`` takes them, and the hub uses them as reasons.

*Routes* are what goes over the broker: a message about a market or an event is
published once, on the route of its event (its sport and a shard of event ids), and a
gateway holds the routes its channels need (:func:`routes_for_lobby` for a lobby, the
one :func:`route` of the event otherwise). ``docs/deployment.md`` ("Scaling Redis")
explains why. The Redis adapters put the deployment's prefix in front of every route.
"""

from __future__ import annotations

import zlib

ROUTES_PER_SPORT = 16
"""Event shards per sport. Publishers and gateways must agree on it: it is a constant of
the code, not a setting, so no deployment can disagree with itself."""

_ROUTE = "r:"


def market_channel(market_id: str) -> str:
    return f"m:{market_id}"


def event_channel(event_id: str) -> str:
    return f"e:{event_id}"


def lobby_channel(sport: str) -> str:
    return f"l:{sport}"


def shard(event_id: str) -> int:
    """The event's shard, in ``range(ROUTES_PER_SPORT)``; stable across processes."""
    return zlib.crc32(event_id.encode()) % ROUTES_PER_SPORT


def route(sport: str, event_id: str) -> str:
    """The one route every message about the event and its markets is published on."""
    return f"{_ROUTE}{sport}:{shard(event_id)}"


def routes_for_lobby(sport: str) -> tuple[str, ...]:
    """Every route of a sport: what a gateway holds for the sport's lobby."""
    return tuple(f"{_ROUTE}{sport}:{n}" for n in range(ROUTES_PER_SPORT))


def split_channel(channel: str) -> tuple[str, str]:
    """``("m", market_id)``, ``("e", event_id)`` or ``("l", sport)``."""
    kind, _, name = channel.partition(":")
    return kind, name


def sport_of_route(name: str) -> str:
    """The sport a route (without the deployment prefix) carries."""
    return name[len(_ROUTE) :].rpartition(":")[0]


def owner_beat_channel() -> str:
    """The channel of the book processors' owner beats (:mod:`channels.liveness`)."""
    return "o:beat"
