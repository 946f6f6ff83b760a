"""A book processor's owner beat, and the eviction of a member of its group gone silent.

:class:`OwnerBeats` runs beside a :class:`~feeds.books_runner.BooksRunner` (a task of its
own, not a turn of the Kafka loop): every ``beat_s`` it publishes an
:class:`~channels.liveness.OwnerBeat` naming the runner's member id and the partitions it
holds, and listens to the beats of the other members of its group. One silent for longer
than ``evict_after_s`` is removed from the group at once (:meth:`Member.evict`), so Kafka
rebalances its partitions to the living without waiting for its session to expire. A member
judges others only while it hears its own beats (else its own link to Redis is what went
silent). See docs/guarantees.md, "Owner liveness and failover".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from aiokafka.errors import KafkaError

from channels.broker import Broker, BrokerError
from channels.liveness import (
    OWNER_BEAT_MS,
    OWNER_EVICT_MS,
    OwnerBeat,
    Silence,
    decode_beat,
    encode_beat,
)
from channels.names import owner_beat_channel
from feeds.embedded import now_ms

log = logging.getLogger(__name__)


class Member(Protocol):
    """What the beats need of a book processor (:class:`~feeds.books_runner.BooksRunner`)."""

    @property
    def group(self) -> str: ...

    @property
    def member(self) -> str | None:
        """Its Kafka member id; None until it joined the group."""

    @property
    def holds(self) -> frozenset[int]:
        """The partition numbers whose books it holds and processes now."""

    async def evict(self, member: str) -> bool:
        """Remove another member from the group; False when Kafka did not (it had left)."""


class OwnerBeats:
    """Beat for ``runner`` on ``broker`` every ``beat_s``; evict members of its group silent
    for longer than ``evict_after_s`` (``None``: never). Run with :meth:`run` in a task the
    caller owns and cancels."""

    def __init__(
        self,
        broker: Broker,
        runner: Member,
        *,
        beat_s: float = OWNER_BEAT_MS / 1000,
        evict_after_s: float | None = OWNER_EVICT_MS / 1000,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if beat_s <= 0:
            raise ValueError(f"beat_s must be > 0, got {beat_s}")
        self._broker = broker
        self._runner = runner
        self._beat_s = beat_s
        self._monotonic = monotonic
        self._silence: Silence[str] | None = Silence(evict_after_s) if evict_after_s else None
        self._echo = monotonic()
        """When this member last heard its own beat."""
        self.evicted: list[str] = []

    async def run(self) -> None:
        sub = await self._broker.subscription(self._on_message, self._on_resync)
        try:
            await sub.subscribe(owner_beat_channel())
            while True:
                await self._beat()
                await self._evict_silent()
                await asyncio.sleep(self._beat_s)  # The beat's cadence.
        finally:
            await sub.close()

    async def _beat(self) -> None:
        runner = self._runner
        member = runner.member
        if member is None:
            return
        beat = OwnerBeat(runner.group, member, tuple(sorted(runner.holds)), now_ms())
        try:
            async with asyncio.timeout(self._beat_s * 4):
                await self._broker.publish((owner_beat_channel(),), encode_beat(beat))
        except (BrokerError, TimeoutError) as exc:
            log.debug("owner beat not sent: %r", exc)

    def _on_message(self, channel: str, payload: bytes) -> None:
        beat = decode_beat(payload)
        if beat is None or beat.group != self._runner.group:
            return
        now = self._monotonic()
        if beat.member == self._runner.member:
            self._echo = now
        elif self._silence is not None:
            self._silence.heard((beat.member,), now)

    def _on_resync(self) -> None:
        # Beats sent while the connection was down were not heard: start over.
        if self._silence is not None:
            self._silence.restart(self._monotonic())

    async def _evict_silent(self) -> None:
        silence = self._silence
        if silence is None:
            return
        now = self._monotonic()
        if now - self._echo > silence.after_s:
            silence.restart(now)  # Deaf ourselves: judge nobody.
            return
        for member in silence.due(now):
            try:
                async with asyncio.timeout(silence.after_s):
                    evicted = await self._runner.evict(member)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("could not evict silent member %s (retrying): %r", member, exc)
                silence.retry(member)
                continue
            silence.forget(member)
            if evicted:
                self.evicted.append(member)
                log.warning("member %s silent: removed from the group", member)
