"""The processor core: malformed records are dead-lettered with a reason, never raised."""

from __future__ import annotations

import pytest

from feeds.embedded import epoch_minter
from feeds.processor import FeedRecord, Processor


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "malformed"),
        (b'{"kind":"odds","event_id":"\x80"}', "malformed"),  # invalid UTF-8
        (b'{"kind":"dance"}', "malformed"),
        (b'{"kind":"odds","event_id":"e","market_id":"m","ts":1,"prices":[]}', "unknown_market"),
    ],
)
def test_bad_records_become_dead_letters_and_offsets_advance(value: bytes, reason: str) -> None:
    processor = Processor(epoch_minter(lambda: 0))
    step = processor.process([FeedRecord("odds", 3, 41, value)])
    assert [d.reason.split(":")[0] for d in step.dead_letters] == [reason]
    assert step.batch.offsets == {("odds", 3): 42}
    assert not step.publications
