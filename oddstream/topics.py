"""The Kafka topics of the roles that produce or consume them (``books``, ``archive``,
``feed``)."""

from __future__ import annotations

from aiokafka.errors import KafkaError

from feeds.kafka_feed import TopicLayoutError, TopicNames, ensure_topics, partition_counts
from oddstream.options import ArchiveSettings, BooksSettings, FeedSettings
from oddstream.process import Failed


def names(settings: BooksSettings | ArchiveSettings | FeedSettings) -> TopicNames:
    return TopicNames(prefix=settings.topic_prefix)


async def ensure(
    settings: BooksSettings | ArchiveSettings | FeedSettings, *, adopt: bool = False
) -> None:
    """Create missing topics with ``--partitions``. With ``adopt`` (processors), feed topics
    that already exist keep their partition count: the deployment chose it. Raises
    :class:`Failed` when Kafka does not answer or the topics disagree."""
    topics = names(settings)
    try:
        partitions = settings.partitions
        if adopt:
            counts = await partition_counts(settings.kafka, timeout_s=15)
            partitions = next((counts[t] for t in topics.feed if t in counts), settings.partitions)
        await ensure_topics(settings.kafka, partitions, topics=topics, timeout_s=15)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise Failed(
            1, f"Kafka at {settings.kafka} (--kafka / ODDSTREAM_KAFKA) is unreachable: {exc!r}"
        ) from None
    except TopicLayoutError as exc:
        raise Failed(1, str(exc)) from None
