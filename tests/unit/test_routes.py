"""The routing names (``channels.names``): one route per event, stable, within the
sport's lobby routes, and the sport recoverable from a route."""

from __future__ import annotations

import pytest

from channels.names import (
    ROUTES_PER_SPORT,
    route,
    routes_for_lobby,
    shard,
    split_channel,
    sport_of_route,
)

EVENTS = [f"fb-{n}" for n in range(200)]


def test_an_event_has_one_stable_route_among_its_sports_lobby_routes() -> None:
    lobby = routes_for_lobby("football")
    assert len(set(lobby)) == ROUTES_PER_SPORT
    for e in EVENTS:
        assert route("football", e) in lobby
        assert route("football", e) == f"r:football:{shard(e)}"  # crc32: same in every process
    assert route("football", "fb-1") == "r:football:8"  # Pinned: a change re-routes.


def test_events_spread_over_every_route() -> None:
    used = {route("football", e) for e in EVENTS}
    assert used == set(routes_for_lobby("football"))


def test_sports_never_share_a_route() -> None:
    assert not set(routes_for_lobby("football")) & set(routes_for_lobby("tennis"))


@pytest.mark.parametrize("sport", ["football", "ice:hockey", "a", "e-sports"])
def test_the_sport_of_a_route(sport: str) -> None:
    assert {sport_of_route(r) for r in routes_for_lobby(sport)} == {sport}


@pytest.mark.parametrize(
    ("channel", "parts"),
    [
        ("m:fb-1:1x2", ("m", "fb-1:1x2")),
        ("e:fb-1", ("e", "fb-1")),
        ("l:football", ("l", "football")),
    ],
)
def test_split_channel(channel: str, parts: tuple[str, str]) -> None:
    assert split_channel(channel) == parts
