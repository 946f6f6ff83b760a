"""The ``deltas`` topic as a downstream consumer sees it, and its check: per market and
epoch, ``seq`` gapless and never reused.

:func:`check_topic` is pure (unit-tested in ``tests/faults/test_topic.py``); :func:`read_topic`
reads a whole topic, bounded, with the isolation level a consumer of ``deltas`` uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

import protocol
from protocol import Delta, Snapshot


@dataclass
class TopicVerdict:
    """What one market's messages on the topic broke, summed over every market."""

    messages: int = 0
    markets: int = 0
    gaps: int = 0
    """Seqs missing: a message after a hole in its market's sequence (a snapshot of a new
    epoch starts a new sequence anywhere)."""
    duplicates: int = 0
    """A seq seen before, with the same message (a repeat)."""
    reused: int = 0
    """A seq seen before with another message: two owners gave out the same seq."""
    foreign: int = 0
    """A delta of an epoch that is not its market's current one."""
    details: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        return [
            f"{n} {what} on the deltas topic"
            for n, what in (
                (self.gaps, "gaps"),
                (self.duplicates, "duplicate seqs"),
                (self.reused, "reused seqs"),
                (self.foreign, "deltas of a foreign epoch"),
            )
            if n
        ]


@dataclass
class _Stream:
    epoch: str
    seq: int
    seen: dict[int, bytes]
    """Seq -> the first message at that seq, within the epoch."""


def check_topic(messages: Iterable[bytes], *, max_details: int = 20) -> TopicVerdict:
    """Check the messages of one ``deltas`` topic, each partition's in offset order (a
    market's messages are all in one partition). A market's stream starts at its first
    snapshot (seq anything) and restarts at a snapshot of a new epoch; within an epoch
    every message must carry the next seq."""
    verdict = TopicVerdict()
    streams: dict[str, _Stream] = {}

    def note(text: str) -> None:
        if len(verdict.details) < max_details:
            verdict.details.append(text)

    for raw in messages:
        verdict.messages += 1
        message = protocol.decode_server(raw)
        if not isinstance(message, Snapshot | Delta):
            continue
        market, epoch, seq = message.market_id, message.epoch, message.seq
        stream = streams.get(market)
        if stream is None or (isinstance(message, Snapshot) and epoch != stream.epoch):
            if stream is None and isinstance(message, Delta):
                verdict.gaps += 1  # Its snapshot never came.
                note(f"{market}: first message is a delta at {epoch}/{seq}")
            streams[market] = _Stream(epoch, seq, {seq: raw})
            continue
        if epoch != stream.epoch:
            verdict.foreign += 1
            note(f"{market}: delta of epoch {epoch} during {stream.epoch}")
            continue
        first = stream.seen.get(seq)
        if first is not None:
            if _same(first, raw):
                verdict.duplicates += 1
                note(f"{market}: {epoch}/{seq} again")
            else:
                verdict.reused += 1
                note(f"{market}: {epoch}/{seq} reused by another message")
            continue
        if seq != stream.seq + 1:
            verdict.gaps += 1
            note(f"{market}: {epoch}/{seq} after {stream.seq}")
        stream.seen[seq] = raw
        stream.seq = max(stream.seq, seq)
    verdict.markets = len(streams)
    return verdict


def _same(a: bytes, b: bytes) -> bool:
    """The same message, whatever the field order of its encoding."""
    return a == b or msgspec.json.decode(a) == msgspec.json.decode(b)


async def read_topic(
    kafka: str, topic: str, *, read_committed: bool, timeout: float = 30
) -> list[bytes]:
    """Every message of ``topic`` now, partition after partition, each in offset order
    (reading stops at each partition's end offset taken at the start)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    isolation = "read_committed" if read_committed else "read_uncommitted"
    consumer: Any = AIOKafkaConsumer(
        bootstrap_servers=kafka, enable_auto_commit=False, isolation_level=isolation
    )
    out: list[bytes] = []
    async with asyncio.timeout(timeout):
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(await _partitions(kafka, topic))]
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            for tp in parts:
                if ends[tp] == 0:
                    continue
                consumer.seek(tp, 0)
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    out += [r.value for r in batch.get(tp, ())]
        finally:
            await stop_consumer(consumer)
    return out


async def _partitions(kafka: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin: Any = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    count = len(described[0]["partitions"]) if described[0]["error_code"] == 0 else 0
    if not count:
        raise AssertionError(f"no topic {topic}: {described}")
    return count


async def stop_consumer(consumer: Any) -> None:
    """Stop an aiokafka consumer."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        # aiokafka re-raises the cancellation of its own internal task here; ours
        # (a timeout, a test ending) must still propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
