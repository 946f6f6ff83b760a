"""A book processor's envelopes (feeds/observe.py): each delta carries its own record's
feed timestamp, the step's publish time once for all; a header a producer got wrong
never reaches the envelope line."""

from __future__ import annotations

from channels.metrics import REGISTRY
from channels.stamps import STAMP_HEADER, read_envelope
from feeds.embedded import epoch_minter
from feeds.model import encode_feed, topic_of
from feeds.observe import StepObserver
from feeds.processor import FeedRecord, Processor
from tests.component.stack import T0, event, match_result, odds

M1 = "fb-1:1x2"


def records(*stamps: bytes | None) -> list[FeedRecord]:
    """The event, its market and one price per stamp (None: no stamp header)."""
    messages = [event(), match_result(), *(odds(M1, T0 + i, home=f"3.{i}1") for i in range(1, 9))]
    out = []
    for offset, (message, stamp) in enumerate(zip(messages, stamps, strict=False)):
        headers = () if stamp is None else ((STAMP_HEADER, stamp),)
        value = encode_feed(message)
        out.append(FeedRecord(topic_of(message), 0, offset, value, b"fb-1", headers, 7))
    return out


def test_each_delta_carries_its_own_feed_timestamp() -> None:
    batch = records(b"1000 1001", b"2000 2002", None, b"4000 4004", b"x1 5", b"5000\n 6")
    processor = Processor(epoch_minter(lambda: T0))
    step = processor.process(batch)
    observer = StepObserver()
    stamp = observer.applied(batch, 0.001)
    assert stamp is not None
    published = observer.publications(step, stamp)
    assert [payload for _, payload in published] != step.publications
    heads = [read_envelope(payload.partition(b"\n")[0]) for _, payload in published]
    feeds = [h.feed_us if h is not None else "none" for h in heads]
    # Event state (1000), market snapshot (2000), then one delta per price: no stamp, 4000,
    # an unreadable one, one with a line break: only digits go into the envelope.
    assert feeds == [1000, 2000, None, 4000, None, None]
    assert len({h.publish_us for h in heads if h is not None}) == 1
    bare = [payload.partition(b"\n")[2] for _, payload in published]
    assert bare == [payload for _, payload in step.publications]


def test_without_observation_the_envelope_has_the_publish_time_only() -> None:
    batch = records(b"1000 1001", b"2000 2002")
    step = Processor(epoch_minter(lambda: T0)).process(batch)
    observer = StepObserver(enabled=False)
    assert observer.applied(batch, 0.001) is None
    # The newest feed timestamp is kept all the same (the feed-stale alert reads it).
    assert REGISTRY.get_sample_value("oddstream_last_feed_message_timestamp_seconds") == 0.002
    heads = [read_envelope(p.partition(b"\n")[0]) for _, p in observer.publications(step, None)]
    assert [h is not None and h.feed_us for h in heads] == [None, None]
