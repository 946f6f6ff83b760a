"""A gateway's watch over the book processors' owner beats (:mod:`channels.liveness`).

:class:`OwnerWatch` subscribes to the beat channel and remembers when a beat last named each
partition. A timer of its own (every quarter of the bound) finds the partitions no beat
named for ``silent_after_s``, reads from storage which markets they hold
(:meth:`~channels.store.Store.load_partition`: the processors' own index, right whatever
partitioner the feed used) and has the relay show the watched open ones suspended
``feed_stale`` (:meth:`~channels.relay.Relay.suspend`). The first beat naming the partition
again lifts them (:meth:`~channels.relay.Relay.lift`); so does a market's own next message.
See docs/guarantees.md, "Owner liveness and failover".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from channels.broker import Broker, Subscription
from channels.liveness import Silence, decode_beat
from channels.names import owner_beat_channel
from channels.relay import Relay
from channels.store import Store, StoreError

log = logging.getLogger(__name__)


class OwnerWatch:
    """Suspend, for this gateway's clients, the markets of partitions whose owner went
    silent. :meth:`start` subscribes and starts the timer; :meth:`close` stops both."""

    def __init__(
        self,
        broker: Broker,
        store: Store,
        relay: Relay,
        *,
        silent_after_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._broker = broker
        self._store = store
        self._relay = relay
        self._silence: Silence[int] = Silence(silent_after_s)
        self._monotonic = monotonic
        self._suspended: dict[int, list[str]] = {}
        """Per silent partition, the markets this gateway suspended."""
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def silent(self) -> frozenset[int]:
        """Partitions no beat has named for longer than the bound, not named since."""
        return self._silence.silent

    async def start(self) -> None:
        self._sub = await self._broker.subscription(self._on_message, self._on_resync)
        await self._sub.subscribe(owner_beat_channel())
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._sub is not None:
            await self._sub.close()
            self._sub = None

    def _on_message(self, channel: str, payload: bytes) -> None:
        beat = decode_beat(payload)
        if beat is None:
            return
        for partition in self._silence.heard(beat.partitions, self._monotonic()):
            log.info("partition %d has an owner again", partition)
            self._relay.lift(self._suspended.pop(partition, ()))

    def _on_resync(self) -> None:
        # Beats sent while the connection was down were not heard: start over.
        self._silence.restart(self._monotonic())

    async def _watch(self) -> None:
        period = self._silence.after_s / 4
        while True:
            await asyncio.sleep(period)  # The watch's own timer.
            for partition in self._silence.due(self._monotonic()):
                try:
                    await self._suspend(partition)
                except (StoreError, TimeoutError) as exc:
                    log.warning("partition %d silent, storage failed: %r", partition, exc)
                    self._silence.retry(partition)

    async def _suspend(self, partition: int) -> None:
        async with asyncio.timeout(self._silence.after_s * 4):
            snapshots, _ = await self._store.load_partition(partition)
        if partition not in self._silence.silent:
            return  # A beat named it while storage answered.
        markets = self._relay.suspend(s.market_id for s in snapshots)
        self._suspended.setdefault(partition, []).extend(markets)
        log.warning(
            "partition %d: no owner beat for %.1fs; %d watched markets suspended",
            partition,
            self._silence.after_s,
            len(markets),
        )
