"""The broker seam: publish encoded messages on channels; a node subscribes only to the
channels its clients want and receives every message on them through a handler.

Delivery is at-most-once (like Redis pub/sub): a subscriber may miss messages around a
reconnect. ``on_resync`` tells it when that may have happened, so it can check its books
against storage; per-market ``seq`` exposes any other gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]
"""Called with (channel, payload) for each message; must not block or await."""
ResyncHandler = Callable[[], None]
"""Called after the subscription was (re)established and messages may have been missed."""


class BrokerError(Exception):
    """The broker is unreachable or refused an operation."""

    retriable = True


class Subscription(Protocol):
    """One node's subscription set on the broker."""

    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``; messages published after this returns are delivered."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def close(self) -> None: ...


class Broker(Protocol):
    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        """Publish the same payload on every channel, in order."""

    async def subscription(
        self, on_message: MessageHandler, on_resync: ResyncHandler
    ) -> Subscription:
        """Open a subscription set delivering to ``on_message``."""

    async def close(self) -> None: ...


class MemoryBroker:
    """In-process broker for ``oddstream dev`` and tests: delivery is synchronous, in
    publish order, to every subscription of the channel."""

    def __init__(self) -> None:
        self._channels: dict[str, set[_MemorySubscription]] = {}
        self.published = 0

    async def publish(self, channels: Sequence[str], payload: bytes) -> None:
        self.publish_now(channels, payload)

    def publish_now(self, channels: Sequence[str], payload: bytes) -> None:
        self.published += 1
        for channel in channels:
            for sub in tuple(self._channels.get(channel, ())):
                sub.on_message(channel, payload)

    async def subscription(
        self, on_message: MessageHandler, on_resync: ResyncHandler
    ) -> Subscription:
        return _MemorySubscription(self, on_message)

    async def close(self) -> None:
        self._channels.clear()

    def _add(self, channel: str, sub: _MemorySubscription) -> None:
        self._channels.setdefault(channel, set()).add(sub)

    def _remove(self, channel: str, sub: _MemorySubscription) -> None:
        subs = self._channels.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._channels[channel]


class _MemorySubscription:
    def __init__(self, broker: MemoryBroker, on_message: MessageHandler):
        self._broker = broker
        self.on_message = on_message
        self._channels: set[str] = set()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._broker._add(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._broker._remove(channel, self)

    async def close(self) -> None:
        for channel in tuple(self._channels):
            self._broker._remove(channel, self)
        self._channels.clear()
