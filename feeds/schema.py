"""Generate ``feed.json``: the JSON Schema of the neutral feed messages on the Kafka feed
topics, referenced by the AsyncAPI document that ``python -m protocol.schema`` writes.

``python -m feeds.schema [--check] [--out docs/schema]``, with the same rules as
:mod:`protocol.schema` (which cannot import this package, hence a command of its own).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from feeds.model import TOPIC_OF, FeedMessage
from protocol.schema import FEED_SCHEMA_FILE, FEED_TOPICS, json_schema, render, run


def topics_by_name() -> dict[str, tuple[str, ...]]:
    """Feed topic -> names of the message Structs it carries, from :data:`TOPIC_OF`."""
    topics: dict[str, tuple[str, ...]] = {}
    for cls, topic in TOPIC_OF.items():
        topics[topic] = (*topics.get(topic, ()), cls.__name__)
    return topics


def generate() -> dict[str, str]:
    """File name -> content of the one file this module owns."""
    document = json_schema(
        [FeedMessage],
        title="FeedMessage",
        description="Any neutral feed message on the Kafka feed topics, tagged by `kind`.",
    )
    return {FEED_SCHEMA_FILE: render(document)}


def main(argv: Sequence[str] | None = None) -> int:
    expected = {topic: tuple(sorted(names)) for topic, names in FEED_TOPICS.items()}
    actual = {topic: tuple(sorted(names)) for topic, names in topics_by_name().items()}
    if expected != actual:
        print(
            "protocol.schema.FEED_TOPICS disagrees with feeds.model.TOPIC_OF: "
            f"{expected} != {actual}; update FEED_TOPICS, then regenerate both schemas",
            file=sys.stderr,
        )
        return 1
    return run(argv, prog="python -m feeds.schema", files=generate())


if __name__ == "__main__":
    sys.exit(main())
