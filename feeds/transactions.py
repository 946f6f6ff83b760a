"""The ``deltas`` topic exactly once: Kafka transactions per feed partition, and an outbox
in storage that the next owner of a partition re-produces from.

The design and its proof are in ``docs/data.md`` ("What the topic promises"). In short,
per feed partition ``n`` a processor owns:

- a transactional producer with the id ``<group>-p<n>``: starting it (the new owner's
  ``init_transactions``) aborts the previous owner's open transaction and fences its
  producer, so a zombie can commit nothing more;
- per step with messages for ``n``: a step number (one more than the last), and an
  :class:`OutboxEntry` (the number, the feed offsets after the step, the messages)
  written to storage in the step's own fenced write (``Batch.outbox``); storage keeps
  the last :data:`~channels.store.OUTBOX_KEEP` entries (more than the steps that can be
  stored and not yet committed: :mod:`feeds.steps`);
- one Kafka transaction per step and partition: the messages, and the feed offsets of
  ``n`` sent to the transaction with the step number as their metadata. So the group's
  committed offsets of ``n`` name the last step the topic holds.

On assignment (after the fencing claim) :meth:`DeltaTransactions.open` starts the producer,
reads the step the topic holds (:func:`step_of` the committed metadata), and produces, in
one transaction, the outbox entries after it (:func:`pending`): the steps storage has
and the topic lacks (their owner died between the two writes, or was fenced).

The pure part (entries, their encoding, :func:`pending`) is unit-tested; the Kafka part
runs in the integration tests and the fault scenario ``random_kills``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ProducerFenced

from channels.fencing import FencedError

log = logging.getLogger(__name__)


_METADATA = "oddstream-step="


class OutboxEntry(msgspec.Struct, array_like=True, frozen=True):
    """One step's messages of one feed partition, as storage keeps them until the topic
    has them."""

    step: int
    """The partition's step number (1, 2, 3... over every owner)."""
    offsets: dict[str, int]
    """Feed topic -> the next offset of this partition after the step."""
    messages: list[tuple[str, bytes]]
    """(market_id, payload), in seq order per market."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(OutboxEntry)


def encode_entry(entry: OutboxEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(raw: bytes) -> OutboxEntry:
    return _decoder.decode(raw)


def metadata(step: int) -> str:
    """The offset metadata that says the topic holds ``step`` of a partition."""
    return f"{_METADATA}{step}"


def step_of(meta: str | None) -> int:
    """The step number of committed offset metadata; 0 when it names none."""
    if meta and meta.startswith(_METADATA):
        with contextlib.suppress(ValueError):
            return int(meta[len(_METADATA) :])
    return 0


def pending(entries: Sequence[OutboxEntry], committed: int) -> list[OutboxEntry]:
    """The entries after step ``committed``, in step order: stored, not on the topic."""
    return sorted((e for e in entries if e.step > committed), key=lambda e: e.step)


class DeltaTransactions:
    """The transactional producers of the feed partitions one processor owns.

    ``key_of`` gives a market's record key and ``deltas`` partition. Every network
    operation is bounded by ``timeout_s``; Kafka errors are raised to the caller, whose
    step then fails (:class:`FencedError` when another owner took the partition and
    Kafka fenced this producer)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str,
        deltas: str,
        feed: Sequence[str],
        key_of: Callable[[str], tuple[bytes, int]],
        client_id: str,
        linger_ms: int,
        timeout_s: float,
    ):
        self._bootstrap = bootstrap
        self._group = group_id
        self._deltas = deltas
        self._feed = tuple(feed)
        self._key_of = key_of
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._timeout = timeout_s
        self._producers: dict[int, Any] = {}
        self._steps: dict[int, int] = {}
        self.reproduced = 0
        """Messages produced again from the outbox (steps a previous owner stored only)."""

    @property
    def partitions(self) -> set[int]:
        """The partitions with a producer open."""
        return set(self._producers)

    def entry(
        self, partition: int, messages: list[tuple[str, bytes]], offsets: Mapping[str, int]
    ) -> OutboxEntry:
        """The next step of ``partition`` (numbered now: call in step order)."""
        step = self._steps[partition] = self._steps.get(partition, 0) + 1
        return OutboxEntry(step, dict(offsets), messages)

    async def open(self, partition: int, outbox: Sequence[bytes]) -> None:
        """Own ``partition``'s transactional id (fencing its previous owner), then produce
        the outbox entries the topic lacks. Call after the fencing claim."""
        await self.close(partition)
        producer: Any = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-p{partition}",
            transactional_id=f"{self._group}-p{partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=self._linger_ms,
            request_timeout_ms=int(self._timeout * 1000),
        )
        async with asyncio.timeout(self._timeout):
            await producer.start()
        self._producers[partition] = producer
        committed = await self._committed_step(partition)
        entries = [decode_entry(raw) for raw in outbox]
        todo = pending(entries, committed)
        self._steps[partition] = max([committed, *(e.step for e in entries)])
        if todo:
            messages = [m for e in todo for m in e.messages]
            await self.send(partition, OutboxEntry(todo[-1].step, todo[-1].offsets, messages))
            self.reproduced += len(messages)
            log.warning(
                "partition %d: %d messages of steps %d-%d were stored but not on the deltas "
                "topic; produced them",
                partition,
                len(messages),
                todo[0].step,
                todo[-1].step,
            )

    async def send(self, partition: int, entry: OutboxEntry) -> None:
        """One transaction: ``entry``'s messages and its offsets, with its step number."""
        producer = self._producers[partition]
        async with asyncio.timeout(self._timeout):
            await producer.begin_transaction()
            try:
                futures = []
                by_partition: dict[int, Any] = {}
                for market_id, payload in entry.messages:
                    key, where = self._key_of(market_id)
                    batch = by_partition.get(where)
                    if batch is None:
                        batch = by_partition[where] = producer.create_batch()
                    if batch.append(key=key, value=payload, timestamp=None) is None:
                        batch.close()
                        futures.append(
                            await producer.send_batch(batch, self._deltas, partition=where)
                        )
                        batch = by_partition[where] = producer.create_batch()
                        batch.append(key=key, value=payload, timestamp=None)
                for where, batch in by_partition.items():
                    batch.close()
                    futures.append(await producer.send_batch(batch, self._deltas, partition=where))
                await asyncio.gather(*futures)
                meta = metadata(entry.step)
                offsets = {
                    TopicPartition(topic, partition): (offset, meta)
                    for topic, offset in entry.offsets.items()
                }
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self._group)
                await producer.commit_transaction()
            except ProducerFenced as exc:
                raise FencedError(
                    f"partition {partition}: Kafka fenced its transactional producer "
                    "(a newer owner started one)"
                ) from exc
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
                raise

    async def send_step(self, outbox: Mapping[int, bytes]) -> None:
        """A step's transactions (``Batch.outbox``: partition -> its entry), one per
        partition, concurrently."""
        await asyncio.gather(*(self.send(p, decode_entry(raw)) for p, raw in outbox.items()))

    async def close(self, partition: int) -> None:
        producer = self._producers.pop(partition, None)
        if producer is not None:
            async with asyncio.timeout(self._timeout):
                await producer.stop()

    async def close_all(self) -> None:
        for partition in list(self._producers):
            await self.close(partition)

    async def _committed_step(self, partition: int) -> int:
        admin: Any = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-admin",
            request_timeout_ms=int(self._timeout * 1000),
        )
        async with asyncio.timeout(self._timeout):
            await admin.start()
            try:
                tps = [TopicPartition(t, partition) for t in self._feed]
                committed = await admin.list_consumer_group_offsets(self._group, partitions=tps)
            finally:
                await admin.close()
        return max((step_of(c.metadata) for c in committed.values() if c.offset >= 0), default=0)


def split(
    deltas: Sequence[tuple[str, bytes]], partition_of: Callable[[str], int]
) -> dict[int, list[tuple[str, bytes]]]:
    """A step's messages by the feed partition of their market, in order."""
    out: dict[int, list[tuple[str, bytes]]] = {}
    for market_id, payload in deltas:
        out.setdefault(partition_of(market_id), []).append((market_id, payload))
    return out
