"""The pure part of the exactly-once ``deltas`` topic (:mod:`feeds.transactions`): outbox
entries, the step number in the committed offsets' metadata, what the next owner sends."""

from __future__ import annotations

import pytest

from feeds.transactions import (
    OutboxEntry,
    decode_entry,
    encode_entry,
    metadata,
    pending,
    split,
    step_of,
)


def entry(step: int) -> OutboxEntry:
    return OutboxEntry(step, {"odds": 10 * step}, [(f"m{step}", b'{"seq":%d}' % step)])


def test_an_entry_round_trips() -> None:
    e = entry(7)
    assert decode_entry(encode_entry(e)) == e


@pytest.mark.parametrize(
    ("meta", "step"),
    [
        (metadata(12), 12),
        ("", 0),
        (None, 0),
        ("someone else's", 0),
        ("oddstream-step=x", 0),
    ],
)
def test_step_of_metadata(meta: str | None, step: int) -> None:
    assert step_of(meta) == step


@pytest.mark.parametrize(
    ("stored", "committed", "sent"),
    [
        pytest.param([1, 2], 2, [], id="all-on-the-topic"),
        pytest.param([1, 2], 1, [2], id="last-step-lost"),
        pytest.param([2, 3], 1, [2, 3], id="both-lost-in-order"),
        pytest.param([3, 2], 1, [2, 3], id="sorted-by-step"),
        pytest.param([], 5, [], id="empty-outbox"),
        pytest.param([4, 5], 9, [], id="topic-ahead-of-a-lost-store"),
    ],
)
def test_pending_entries(stored: list[int], committed: int, sent: list[int]) -> None:
    assert [e.step for e in pending([entry(s) for s in stored], committed)] == sent


def test_split_by_partition_keeps_order() -> None:
    deltas = [("a", b"1"), ("b", b"2"), ("a", b"3"), ("c", b"4")]
    where = {"a": 0, "b": 1, "c": 0}
    assert split(deltas, where.__getitem__) == {
        0: [("a", b"1"), ("a", b"3"), ("c", b"4")],
        1: [("b", b"2")],
    }
