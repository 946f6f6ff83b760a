"""``oddstream archive``: a Kafka consumer group on ``deltas`` writing MySQL history.

Per fetch: collect the rows of the records (:class:`archive.rows.Rows`), then write them
and the offsets after them in one transaction (:class:`archive.writer.Writer`). MySQL,
not Kafka's committed offsets, is the authority on where each partition stands: on
assignment the runner reads the offsets stored there and seeks to them (``earliest``
for a partition it never stored). The Kafka commit afterwards serves lag monitoring.

Writes happen in the fetch loop, one batch at a time. aiokafka runs a rebalance in its
own task, possibly while a batch is being written: reading the stored offsets on
assignment waits for that write to commit or fail (the writer serialises its calls), so
the seek goes to where the database really stands. A batch fetched for a partition that
was then revoked may still be written by this member while the new owner reads the
same records again: the idempotent inserts make the overlap harmless.

A record that is not a market message, or has a field wider than its column, is
counted (``malformed``), logged and skipped: the ``deltas`` topic is written by the
book processors, so one is a bug upstream (or a feed id beyond the schema's widths), not
input to retry: retrying would stop the archive on it forever. A ``seq`` that does not
follow the last one stored in this process run is counted as a gap (the processor's
at-most-once window on ``deltas``; ``docs/data.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from archive.db import MysqlUrl
from archive.rows import Rows, Unstorable
from archive.writer import Writer
from feeds.kafka_feed import start_client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    group_id: str = "oddstream-archive"
    client_id: str = "oddstream-archive"
    max_records: int = 5_000
    """Records per fetch, and so per transaction."""
    poll_timeout_ms: int = 200
    """Longest wait for records; also bounds how late a stop request is noticed."""
    io_timeout_s: float = 30.0
    """Bound on Kafka start, commit and close."""
    mysql_wait_s: float = 300.0
    """How long a write waits for a lost database before the archive gives up."""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000


@dataclass(slots=True)
class ArchiveStats:
    records: int = 0
    """Market messages stored (a message read twice counts twice)."""
    batches: int = 0
    malformed: int = 0
    gaps: int = 0
    rebalances: int = 0
    retries: int = 0

    def line(self) -> str:
        return (
            f"records={self.records} batches={self.batches} gaps={self.gaps} "
            f"malformed={self.malformed} retries={self.retries} rebalances={self.rebalances}"
        )


class ArchiveRunner:
    """One member of the archive's consumer group. :meth:`run` until :meth:`stop`; raises
    :class:`archive.db.ArchiveError` when MySQL stays away longer than ``mysql_wait_s``."""

    def __init__(
        self, bootstrap: str, mysql: MysqlUrl, topic: str, config: ArchiveConfig | None = None
    ):
        self._bootstrap = bootstrap
        self._topic = topic
        self._config = config = config or ArchiveConfig()
        self._writer = Writer(mysql, config.group_id, topic, wait_s=config.mysql_wait_s)
        self._consumer: Any = None
        self._stopping = asyncio.Event()
        self._last: dict[str, tuple[str, int]] = {}
        """market -> (epoch, seq) last stored by this run, to count gaps."""
        self.stats = ArchiveStats()
        self.positions: dict[int, int] = {}
        """partition -> next offset, as last stored by this member."""
        self.observers: list[Callable[[], None]] = []
        """Called after every batch stored and every assignment (tests wait on them)."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish its batch and return."""
        self._stopping.set()

    async def run(self) -> None:
        config = self._config
        async with contextlib.AsyncExitStack() as stack:
            await self._writer.open()
            stack.push_async_callback(self._writer.close)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=config.group_id,
                client_id=config.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # Only what book processors committed: a step of a transactional
                # producer that was aborted (its owner died or was fenced) is not history.
                isolation_level="read_committed",
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                request_timeout_ms=int(config.io_timeout_s * 1000),
            )
            await start_client(stack, consumer, config.io_timeout_s)
            self._consumer = consumer
            consumer.subscribe(topics=[self._topic], listener=_Listener(self))
            while not self._stopping.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=config.poll_timeout_ms, max_records=config.max_records
                )
                if fetched:
                    await self._store(fetched)

    async def _store(self, fetched: dict[Any, list[Any]]) -> None:
        rows = Rows()
        offsets: dict[int, int] = {}
        last = self._last
        stats = self.stats
        for tp, records in fetched.items():
            for record in records:
                try:
                    message = rows.add(record.value)
                except (msgspec.DecodeError, Unstorable) as exc:
                    stats.malformed += 1
                    log.warning("archive: record %s@%d skipped: %s", tp, record.offset, exc)
                    continue
                before = last.get(message.market_id)
                if (
                    before is not None
                    and before[0] == message.epoch
                    and message.seq > before[1] + 1
                ):
                    stats.gaps += 1
                last[message.market_id] = (message.epoch, message.seq)
            offsets[tp.partition] = records[-1].offset + 1
        await self._writer.write(rows, offsets)
        self.positions.update(offsets)
        stats.records += rows.count
        stats.batches += 1
        stats.retries = self._writer.retries
        log.debug("archive: stored %d records, next offsets %s", rows.count, offsets)
        with contextlib.suppress(CommitFailedError, IllegalStateError):
            # For lag monitoring only; MySQL holds the offsets that count.
            async with asyncio.timeout(self._config.io_timeout_s):
                await self._consumer.commit(
                    {tp: records[-1].offset + 1 for tp, records in fetched.items()}
                )
        self._observe()

    def _observe(self) -> None:
        for observer in self.observers:
            observer()

    async def _on_assigned(self, partitions: list[int]) -> None:
        self.stats.rebalances += 1
        stored = await self._writer.offsets(partitions)
        consumer = self._consumer
        for p in partitions:
            tp = TopicPartition(self._topic, p)
            if p in stored:
                consumer.seek(tp, stored[p])
            else:
                await consumer.seek_to_beginning(tp)
        log.info("archive: assigned %s, stored offsets %s", sorted(partitions), stored)
        self._observe()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ArchiveRunner):
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        """Nothing to hand over: MySQL holds the offsets (module docstring)."""

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        await self._runner._on_assigned([tp.partition for tp in assigned])
