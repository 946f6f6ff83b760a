"""The Kafka side of the feed: topic layout, and producing neutral feed messages.

:func:`ensure_topics` creates the feed topics (``markets``, ``odds``, ``results``, with
one partition count so they are co-partitioned), the downstream ``deltas`` topic and the
``deadletter`` topic. :class:`KafkaFeedProducer` writes :mod:`feeds.model` messages to
their topic keyed by ``event_id``, so an event's messages share a partition number on
every feed topic, and :func:`produce` paces a feed source into it.

Kafka keeps order within a partition only, and an event's messages are spread over
three topics. So each record :class:`KafkaFeedProducer` writes carries an
``oddstream-order`` header, ``<producer id>:<seq>``, where ``seq`` counts the records
this producer instance sent to that partition number (on any feed topic) from 1. The
book processor uses it to apply an event's messages in exactly the order they were sent:
a market definition before its prices, prices before the close that follows them. See
:class:`feeds.books_runner.CrossTopicMerge`.

aiokafka is untyped; its objects stay inside this module and :mod:`feeds.books_runner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from opentelemetry.trace import Span

from channels import traces
from channels.stamps import STAMP_HEADER, TRACE_HEADER, feed_stamp, now_us
from feeds.embedded import now_ms
from feeds.model import FEED_TOPICS, FeedMessage, FeedTopic, decode_feed, encode_feed, topic_of

log = logging.getLogger(__name__)

ORDER_HEADER = "oddstream-order"
"""Record header ``<producer id>:<seq>`` (ASCII): ``seq`` numbers, from 1, the records
one producer instance sent to one partition number across the feed topics."""

_TOPIC_ALREADY_EXISTS = 36


class KafkaFeedError(Exception):
    """Base of the errors raised by the Kafka feed side."""

    retriable = False


class TopicLayoutError(KafkaFeedError):
    """Feed topics are missing, or their partition counts differ from what was asked or
    from each other (which would break co-partitioning). Not retriable: fix the layout."""


class DeliveryError(KafkaFeedError):
    """Kafka did not acknowledge a record (broker down, timeout); retriable."""

    retriable = True


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Names of the topics, all under one ``prefix`` (empty in production; unique per
    test so tests sharing a broker do not collide)."""

    prefix: str = ""

    @property
    def markets(self) -> str:
        return self.prefix + "markets"

    @property
    def odds(self) -> str:
        return self.prefix + "odds"

    @property
    def results(self) -> str:
        return self.prefix + "results"

    @property
    def deltas(self) -> str:
        return self.prefix + "deltas"

    @property
    def deadletter(self) -> str:
        return self.prefix + "deadletter"

    @property
    def feed(self) -> tuple[str, ...]:
        """The co-partitioned feed topics, in the order a tie is broken (``markets``
        first: a definition must precede its prices)."""
        return tuple(self.prefix + t for t in FEED_TOPICS)

    def of(self, topic: FeedTopic) -> str:
        """The full name of a feed topic."""
        return self.prefix + topic


DEFAULT_TOPICS = TopicNames()


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    *,
    topics: TopicNames = DEFAULT_TOPICS,
    replication: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create the feed, ``deltas`` and ``deadletter`` topics that do not exist, each with
    ``partitions`` partitions.

    Existing topics are left alone, but each feed topic must have exactly ``partitions``
    partitions: raises :class:`TopicLayoutError` otherwise (a feed topic with another
    count would send an event's messages to different partition numbers, so to
    different owners). ``deltas`` and ``deadletter`` may have any count. Raises
    :class:`TimeoutError` when the cluster does not answer within ``timeout_s``, and
    aiokafka's :class:`~aiokafka.errors.KafkaError` for other broker errors.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    wanted = (*topics.feed, topics.deltas, topics.deadletter)
    async with _admin(bootstrap, timeout_s) as admin:
        counts = await _partition_counts(admin)
        _check_feed_layout(topics, counts, partitions)
        missing = [name for name in wanted if name not in counts]
        if missing:
            await _create(admin, missing, partitions, replication)
            # Creation is acknowledged by the controller; the broker's metadata follows
            # shortly after. There is no event for it, so poll.
            while any(name not in counts for name in wanted):
                await asyncio.sleep(0.05)
                counts = await _partition_counts(admin)
            _check_feed_layout(topics, counts, partitions)


async def partition_counts(bootstrap: str, *, timeout_s: float = 30.0) -> dict[str, int]:
    """The partition count of every topic of the cluster."""
    async with _admin(bootstrap, timeout_s) as admin:
        return await _partition_counts(admin)


async def feed_partitions(
    bootstrap: str, *, topics: TopicNames = DEFAULT_TOPICS, timeout_s: float = 30.0
) -> int:
    """The partition count shared by the feed topics. Raises :class:`TopicLayoutError`
    when one is missing or the counts differ."""
    counts = await partition_counts(bootstrap, timeout_s=timeout_s)
    missing = [name for name in topics.feed if name not in counts]
    if missing:
        raise TopicLayoutError(
            f"feed topics {missing} do not exist; create them first (ensure_topics, "
            "`oddstream feed`) with the partition count of the deployment"
        )
    found = {name: counts[name] for name in topics.feed}
    if len(set(found.values())) != 1:
        raise TopicLayoutError(f"feed topics are not co-partitioned: partitions {found}")
    return found[topics.feed[0]]


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, timeout_s: float) -> AsyncIterator[Any]:
    # One deadline over start, the requests and close: every await is bounded.
    admin: Any = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="oddstream-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )
    async with asyncio.timeout(timeout_s):
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()


async def _partition_counts(admin: Any) -> dict[str, int]:
    # Describe every topic (metadata for named topics could auto-create them).
    described: list[dict[str, Any]] = await admin.describe_topics()
    return {
        str(t["topic"]): len(t["partitions"])
        for t in described
        if t["error_code"] == 0 and t["partitions"]
    }


def _check_feed_layout(topics: TopicNames, counts: dict[str, int], partitions: int) -> None:
    wrong = {
        name: counts[name] for name in topics.feed if counts.get(name, partitions) != partitions
    }
    if wrong:
        found = ", ".join(f"{name} has {n}" for name, n in sorted(wrong.items()))
        raise TopicLayoutError(
            f"feed topics must all have {partitions} partitions to stay co-partitioned, "
            f"but {found}; recreate them or pass the existing partition count"
        )


async def _create(admin: Any, names: Sequence[str], partitions: int, replication: int) -> None:
    response: Any = await admin.create_topics(
        [NewTopic(name, partitions, replication) for name in names]
    )
    for error in response.topic_errors:
        name, code = error[0], error[1]
        if code not in (0, _TOPIC_ALREADY_EXISTS):  # Already exists: another creator won.
            detail = error[2] if len(error) > 2 else ""
            raise TopicLayoutError(f"cannot create topic {name}: Kafka error {code} {detail}")
    log.info("created topics %s (%d partitions)", list(names), partitions)


def new_producer(
    bootstrap: str,
    *,
    client_id: str,
    linger_ms: int = 5,
    request_timeout_ms: int = 120_000,
    max_batch_size: int = 256 * 1024,
) -> Any:
    """An idempotent aiokafka producer (acks from every in-sync replica, no duplicates
    or reordering on retries, so order per key is preserved). Not started.

    ``request_timeout_ms`` also bounds how long ``send`` waits for metadata or for room
    in a full batch, so a ``send`` never waits forever. Its default rides out a broker
    restart or a leader election (tens of seconds) instead of failing the feed."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        request_timeout_ms=request_timeout_ms,
    )


#: A Kafka client a long-running role starts and stops (:func:`start_client`).
KafkaClient: TypeAlias = AIOKafkaProducer | AIOKafkaConsumer


async def start_client(
    stack: contextlib.AsyncExitStack, client: KafkaClient, timeout_s: float
) -> None:
    """Start a Kafka client within ``timeout_s``; ``stack`` stops it, within the same
    bound, on the way out (the book processors' and the archive's clients)."""
    async with asyncio.timeout(timeout_s):
        await client.start()
    stack.push_async_callback(_stop_client, client, timeout_s)


async def _stop_client(client: KafkaClient, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        await client.stop()


def _send_span(topic: str, key: bytes | None, headers: list[tuple[str, bytes]]) -> Span | None:
    """The ``feed.send`` span of a record when tracing is on (a root: sampled by the
    provider's ratio); a sampled one's ``traceparent`` is added to ``headers``."""
    tracer = traces.state.tracer
    if tracer is None:
        return None
    attributes = {"messaging.system": "kafka", "messaging.destination.name": topic}
    if key is not None:
        attributes["oddstream.event_id"] = key.decode("utf-8", "replace")
    span = tracer.start_span("feed.send", kind=traces.SpanKind.PRODUCER, attributes=attributes)
    parent = traces.traceparent(span)
    if parent is not None:
        headers.append((TRACE_HEADER, parent.encode()))
    return span


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client) gives a
    keyed record."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class KafkaFeedProducer:
    """Writes feed messages to Kafka. Use as an async context manager::

        async with KafkaFeedProducer(bootstrap) as producer:
            await producer.send(message)
            await producer.flush()

    ``send`` returns once the record is queued; delivery is confirmed by :meth:`flush`
    (also done on a clean exit). A failed delivery is raised as :class:`DeliveryError`
    by the next ``send`` or ``flush``. Send from one task at a time: the order header
    numbers records in call order, which concurrent senders would not preserve.
    Raises :class:`TopicLayoutError` on entry when the feed topics are not
    co-partitioned.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topics: TopicNames = DEFAULT_TOPICS,
        client_id: str = "oddstream-feed",
        linger_ms: int = 5,
        timeout_s: float = 120.0,
    ):
        self._topics = topics
        self._topic = {t: topics.of(t) for t in FEED_TOPICS}
        self._timeout_s = timeout_s
        self._producer: Any = new_producer(
            bootstrap,
            client_id=client_id,
            linger_ms=linger_ms,
            request_timeout_ms=int(timeout_s * 1000),
        )
        self._feed_topics = frozenset(self._topic.values())
        self._producer_id = secrets.token_hex(8).encode()
        self._partitions = 0
        self._partition_of: dict[bytes, int] = {}
        self._seq: dict[int, int] = {}
        self._last_ts = 0
        self._error: BaseException | None = None
        self.sent = 0

    async def __aenter__(self) -> KafkaFeedProducer:
        async with asyncio.timeout(self._timeout_s):
            await self._producer.start()
        try:
            async with asyncio.timeout(self._timeout_s):
                counts = {
                    t: len(await self._producer.partitions_for(t)) for t in self._topic.values()
                }
            if len(set(counts.values())) != 1:
                raise TopicLayoutError(f"feed topics are not co-partitioned: partitions {counts}")
        except BaseException:
            async with asyncio.timeout(self._timeout_s):
                await self._producer.stop()
            raise
        self._partitions = next(iter(counts.values()))
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            async with asyncio.timeout(self._timeout_s):
                await self._producer.stop()

    async def send(self, message: FeedMessage) -> None:
        """Queue ``message`` on its feed topic, keyed by its ``event_id``."""
        await self.send_raw(
            self._topic[topic_of(message)],
            message.event_id.encode(),
            encode_feed(message),
            feed_ts_ms=message.ts,
        )

    async def dead_letter(self, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        """Queue a record that could not be read as a feed message on the dead-letter
        topic, with headers saying why and where it came from."""
        if self._error is not None:
            raise DeliveryError(f"an earlier record was not delivered: {self._error}")
        future: Any = await self._producer.send(
            self._topics.deadletter, value, headers=list(headers)
        )
        future.add_done_callback(self._delivered)

    async def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
        *,
        feed_ts_ms: int | None = None,
    ) -> None:
        """Queue raw bytes on a feed topic (a recorded feed, or a deliberately malformed
        record), keyed like a feed message. A record without a key goes to a partition of
        Kafka's choosing and carries no order header. Every record carries the stage
        stamp header (``feed_ts_ms``, the message's own ``ts``, when known) and, when
        tracing samples its ``feed.send`` span, a ``traceparent`` (see
        ``docs/observability.md``)."""
        if self._error is not None:
            raise DeliveryError(f"an earlier record was not delivered: {self._error}")
        if topic not in self._feed_topics:
            raise ValueError(f"{topic!r} is not a feed topic of this producer")
        # Non-decreasing even if the wall clock steps back (a tie-break for records that
        # carry no order header).
        ts = self._last_ts = max(now_ms(), self._last_ts)
        headers = [*headers, (STAMP_HEADER, feed_stamp(feed_ts_ms, now_us()))]
        span = _send_span(topic, key, headers)
        partition = None
        if key is not None:
            partition = self._partition(key)
            seq = self._seq[partition] = self._seq.get(partition, 0) + 1
            headers = [(ORDER_HEADER, self._producer_id + b":%d" % seq), *headers]
        try:
            future: Any = await self._producer.send(
                topic, value, key=key, partition=partition, timestamp_ms=ts, headers=headers
            )
        finally:
            if span is not None:
                span.end()
        future.add_done_callback(self._delivered)
        self.sent += 1

    def _partition(self, key: bytes) -> int:
        # Kafka's default partitioning of a keyed record (murmur2, as the Java client),
        # computed here because the order header counts per partition number. Events
        # are few: cache it.
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) > 100_000:
                self._partition_of.clear()
            partition = kafka_partition(key, self._partitions)
            self._partition_of[key] = partition
        return partition

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._error = self._error or exc

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged. Raises :class:`DeliveryError`
        if one was not, :class:`TimeoutError` after the producer's timeout."""
        async with asyncio.timeout(self._timeout_s):
            await self._producer.flush()
        if self._error is not None:
            raise DeliveryError(f"a record was not delivered: {self._error}") from self._error


async def produce(
    source: Iterable[FeedMessage],
    producer: KafkaFeedProducer,
    *,
    rate: float | None = None,
    limit: int | None = None,
    restamp: bool = False,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> int:
    """Send messages from ``source`` through ``producer`` and flush; return how many.

    ``rate`` is in messages per second (``None``: as fast as the producer takes them);
    ``limit`` stops after that many messages. With ``restamp`` each message's ``ts`` is
    replaced by ``clock()`` when it is sent, so end-to-end lag is measured from the
    send (as a live feed would stamp it). ``progress`` is called with the count sent so
    far about once a second, and once at the end.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    started = last_report = time.monotonic()
    sent = 0
    for message in source:
        if limit is not None and sent >= limit:
            break
        if rate is not None:
            # Sleep only when more than a millisecond ahead: finer sleeps cost more
            # than they smooth.
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0.001:
                await asyncio.sleep(ahead)
        elif sent % 1000 == 0:
            await asyncio.sleep(0)  # Let the producer's sender task run.
        if restamp:
            message = msgspec.structs.replace(message, ts=clock())
        await producer.send(message)
        sent += 1
        if progress is not None and sent % 256 == 0:
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                progress(sent)
    await producer.flush()
    if progress is not None:
        progress(sent)
    return sent


async def record(
    bootstrap: str,
    *,
    topics: TopicNames = DEFAULT_TOPICS,
    limit: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 30.0,
) -> list[FeedMessage]:
    """Read the feed topics from the beginning until ``limit`` messages or ``idle_s``
    seconds without a new record; return the messages in feed order (by ``ts``, then by
    the producer's order header, so an event's messages keep the order they were sent).

    Records that are not feed messages are skipped with a warning (they are in the
    dead-letter topic's domain, not a recording's)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(timeout_s * 1000),
    )
    async with asyncio.timeout(timeout_s):
        await consumer.start()
    rows: list[tuple[int, int, int, FeedMessage]] = []
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics.feed
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while limit is None or len(rows) < limit:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                break
            for records in batch.values():
                for rec in records:
                    try:
                        message = decode_feed(rec.value)
                    except msgspec.DecodeError as exc:
                        log.warning("skipped %s@%d: %s", rec.topic, rec.offset, exc)
                        continue
                    order = _order_of(rec.headers)
                    rows.append((message.ts, rec.partition, order, message))
    finally:
        await consumer.stop()
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    messages = [row[3] for row in rows]
    return messages if limit is None else messages[:limit]


def _order_of(headers: Sequence[tuple[str, bytes]] | None) -> int:
    for key, value in headers or ():
        if key == ORDER_HEADER:
            _, _, seq = value.decode("ascii", "replace").rpartition(":")
            return int(seq) if seq.isdigit() else 0
    return 0
