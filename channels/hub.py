"""The per-node hub: which local subscribers want which market, event and lobby, and the
synchronous fan-out of one shared :class:`Frame` to all of them.

Fan-out never awaits: :meth:`Subscriber.offer` only appends to the subscriber's bounded
buffer (or marks it overflowed), so one slow client cannot stall the others.
"""

from __future__ import annotations

from typing import Protocol

from channels.frame import Frame

#: Distinct reason sets kept for sharing.
_INTERNED = 65_536


class Subscriber(Protocol):
    """A local consumer of frames (a client session)."""

    def offer(self, frame: Frame) -> None:
        """Take a frame without blocking; the subscriber applies its own overflow policy."""


class Hub:
    """Subscribers by market, and watchers by event and by sport lobby.

    A subscriber is attached to a market for one or more *reasons* (``"m"`` when it asked
    for the market, ``"e:<event>"`` for its event, ``"l:<sport>"`` for its lobby). It
    receives each frame once however many reasons it has, and stays attached until the
    last reason is released.
    """

    def __init__(self) -> None:
        # Reasons are interned frozensets: thousands of clients attached for the same
        # reason share one object instead of holding a set each (memory per connection).
        self._markets: dict[str, dict[Subscriber, frozenset[str]]] = {}
        self._by_sub: dict[Subscriber, dict[str, frozenset[str]]] = {}
        self._events: dict[str, set[Subscriber]] = {}
        self._lobbies: dict[str, set[Subscriber]] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        self.delivered = 0

    # -- markets ---------------------------------------------------------------------------

    def attach(self, market_id: str, sub: Subscriber, reason: str) -> bool:
        """Attach ``sub`` to a market for ``reason``; True when it was not attached at all
        before (it then needs a snapshot before any delta)."""
        subs = self._markets.setdefault(market_id, {})
        reasons = subs.get(sub)
        if reasons is None:
            self._set(market_id, sub, frozenset((reason,)))
            return True
        if reason not in reasons:
            self._set(market_id, sub, reasons | {reason})
        return False

    def detach(self, market_id: str, sub: Subscriber, reason: str) -> bool:
        """Release one reason; True when ``sub`` is no longer attached to the market."""
        reasons = self._markets.get(market_id, {}).get(sub)
        if reasons is None or reason not in reasons:
            return False
        if len(reasons) > 1:
            self._set(market_id, sub, reasons - {reason})
            return False
        self._forget(market_id, sub)
        return True

    def release(self, sub: Subscriber, reason: str) -> list[str]:
        """Release ``reason`` on every market; returns the markets ``sub`` left entirely."""
        left = []
        for market_id, reasons in tuple(self._by_sub.get(sub, {}).items()):
            if reason in reasons:
                if len(reasons) > 1:
                    self._set(market_id, sub, reasons - {reason})
                else:
                    self._forget(market_id, sub)
                    left.append(market_id)
        return left

    def _set(self, market_id: str, sub: Subscriber, reasons: frozenset[str]) -> None:
        interned = self._interned.get(reasons)
        if interned is None:
            if len(self._interned) >= _INTERNED:
                self._interned.clear()  # Bounded; a miss only costs a set.
            interned = self._interned[reasons] = reasons
        self._markets[market_id][sub] = interned
        self._by_sub.setdefault(sub, {})[market_id] = interned

    def drop(self, sub: Subscriber) -> list[str]:
        """Forget ``sub`` entirely (it disconnected); returns the markets it left."""
        left = list(self._by_sub.get(sub, {}))
        for market_id in left:
            self._forget(market_id, sub)
        for index in (self._events, self._lobbies):
            for key in [k for k, subs in index.items() if sub in subs]:
                _discard(index, key, sub)
        return left

    def _forget(self, market_id: str, sub: Subscriber) -> None:
        subs = self._markets[market_id]
        del subs[sub]
        if not subs:
            del self._markets[market_id]
        mine = self._by_sub[sub]
        del mine[market_id]
        if not mine:
            del self._by_sub[sub]

    def release_market(self, market_id: str, reason: str) -> bool:
        """Release ``reason`` of every subscriber on one market; True when no one is
        attached to it any more."""
        for sub in tuple(self._markets.get(market_id, ())):
            self.detach(market_id, sub, reason)
        return market_id not in self._markets

    def reasons(self, market_id: str, sub: Subscriber) -> frozenset[str]:
        """Why ``sub`` is attached to the market (empty when it is not)."""
        return self._markets.get(market_id, {}).get(sub, frozenset())

    def is_attached(self, market_id: str, sub: Subscriber) -> bool:
        return sub in self._markets.get(market_id, ())

    @property
    def market_count(self) -> int:
        """Markets with at least one subscriber."""
        return len(self._markets)

    @property
    def reason_sets(self) -> int:
        """Distinct reason sets interned (bounded)."""
        return len(self._interned)

    def has_subscribers(self, market_id: str) -> bool:
        return market_id in self._markets

    def subscription_counts(self) -> tuple[int, int, int]:
        """(market, event, lobby) subscriptions: subscriber-market pairs held for the
        market itself (reason ``"m"``), then event and lobby watches. For metrics: it
        walks every attachment, so call it per scrape, not per message."""
        markets = sum(1 for held in self._by_sub.values() for r in held.values() if "m" in r)
        events = sum(len(subs) for subs in self._events.values())
        lobbies = sum(len(subs) for subs in self._lobbies.values())
        return markets, events, lobbies

    def markets_of(self, sub: Subscriber) -> list[str]:
        return list(self._by_sub.get(sub, ()))

    def fanout(self, market_id: str, frame: Frame) -> int:
        """Offer ``frame`` to every subscriber of the market; returns how many."""
        subs = self._markets.get(market_id)
        if not subs:
            return 0
        for sub in tuple(subs):
            sub.offer(frame)
        self.delivered += len(subs)
        return len(subs)

    # -- events and lobbies ------------------------------------------------------------------

    def watch_event(self, event_id: str, sub: Subscriber) -> None:
        self._events.setdefault(event_id, set()).add(sub)

    def unwatch_event(self, event_id: str, sub: Subscriber) -> None:
        _discard(self._events, event_id, sub)

    def watch_lobby(self, sport: str, sub: Subscriber) -> None:
        self._lobbies.setdefault(sport, set()).add(sub)

    def unwatch_lobby(self, sport: str, sub: Subscriber) -> None:
        _discard(self._lobbies, sport, sub)

    def event_watchers(self, event_id: str) -> set[Subscriber]:
        return self._events.get(event_id, set())

    def lobby_watchers(self, sport: str) -> set[Subscriber]:
        return self._lobbies.get(sport, set())

    def fanout_event(self, event_id: str, sport: str, frame: Frame) -> int:
        """Offer an event-state frame to the event's and the sport lobby's watchers, once
        each."""
        watchers = self._events.get(event_id, set()) | self._lobbies.get(sport, set())
        for sub in watchers:
            sub.offer(frame)
        self.delivered += len(watchers)
        return len(watchers)


def _discard(index: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]
