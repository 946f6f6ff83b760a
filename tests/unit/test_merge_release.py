"""``CrossTopicMerge.release`` releases runs of one producer's records without choosing
again for each record; it must release exactly what choosing record by record does.
The reference here is that plain loop (sort the heads, choose, pop), run side by side
on random interleavings of producers, topics, gaps and fetches."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.merge import TP, CrossTopicMerge, MergeItem
from feeds.processor import FeedRecord

TOPICS = ("markets", "odds", "results")


class RecordByRecord(CrossTopicMerge):
    """The merge, releasing one record per choice."""

    def release(self, caught_up: Container[TP], now: float, limit: int) -> list[FeedRecord]:
        out: list[FeedRecord] = []
        for partition, queues in self._by_partition.items():
            nexts = self._next.setdefault(partition, {})
            while len(out) < limit:
                heads = sorted((q for q in queues if q.items), key=lambda q: q.items[0].key)
                if not heads:
                    break
                chosen = self._choose(heads, queues, nexts, caught_up)
                if chosen is None:
                    since = self._blocked_since.setdefault(partition, now)
                    if now - since < self._max_hold_s:
                        break
                    chosen = heads[0]
                    self.forced += 1
                self._blocked_since.pop(partition, None)
                item = chosen.items.popleft()
                if item.producer is not None:
                    nexts[item.producer] = max(nexts.get(item.producer, 0), item.seq + 1)
                out.append(item.record)
        return out


@dataclass(frozen=True)
class Send:
    producer: bytes | None
    topic: str
    partition: int
    lost: bool
    """Numbered but never written (a producer that died between two sends)."""


@dataclass(frozen=True)
class Round:
    fetch: tuple[int, ...]
    """How many records of each queue arrive before this release."""
    caught_up: frozenset[TP]
    limit: int
    advance_s: float


sends = st.lists(
    st.builds(
        Send,
        st.sampled_from([b"p1", b"p1", b"p1", b"p2", None]),
        st.sampled_from(["odds", "odds", "odds", "markets", "results"]),
        st.sampled_from([0, 0, 1]),
        st.just(False),
    ),
    min_size=1,
    max_size=120,
)
ALL_TPS = [(t, p) for t in TOPICS for p in (0, 1)]
rounds = st.lists(
    st.builds(
        Round,
        st.tuples(*(st.integers(0, 30) for _ in ALL_TPS)),
        st.frozensets(st.sampled_from(ALL_TPS)),
        st.integers(1, 40),
        st.sampled_from([0.0, 0.0, 0.4, 1.5]),
    ),
    min_size=1,
    max_size=12,
)


def queues_of(plan: list[Send], start_seq: dict[bytes, int]) -> dict[TP, list[MergeItem]]:
    """Each send numbered per (producer, partition number), timestamped in send order
    (with ties), written to its topic's partition in offset order."""
    numbers: dict[tuple[bytes, int], int] = {}
    offsets: dict[TP, int] = {}
    queues: dict[TP, list[MergeItem]] = {tp: [] for tp in ALL_TPS}
    for i, send in enumerate(plan):
        seq = 0
        if send.producer is not None:
            key = (send.producer, send.partition)
            seq = numbers.get(key, start_seq.get(send.producer, 1))
            numbers[key] = seq + 1
        if send.lost:
            continue
        tp = (send.topic, send.partition)
        offset = offsets.get(tp, 0)
        offsets[tp] = offset + 1
        record = FeedRecord(send.topic, send.partition, offset, b"%d" % i)
        ts = 1_000 + i // 3
        queues[tp].append(
            MergeItem(record, (ts, seq, TOPICS.index(send.topic)), send.producer, seq)
        )
    return queues


@settings(max_examples=400, deadline=None)
@given(
    sends,
    rounds,
    st.dictionaries(st.sampled_from([b"p1", b"p2"]), st.sampled_from([1, 1, 5])),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_release_matches_choosing_record_by_record(
    plan: list[Send],
    schedule: list[Round],
    start_seq: dict[bytes, int],
    lose: list[bool],
) -> None:
    # A few sends lost for real (numbered, never written), the rest delivered.
    plan = [
        Send(s.producer, s.topic, s.partition, lose[i % 4] and i % 7 == 3)
        for i, s in enumerate(plan)
    ]
    queues = queues_of(plan, start_seq)
    fast, slow = CrossTopicMerge(TOPICS, 1.0), RecordByRecord(TOPICS, 1.0)
    for merge in (fast, slow):
        for tp in ALL_TPS:
            merge.expect(tp, 0)
    taken = dict.fromkeys(ALL_TPS, 0)
    now = 0.0

    def play(round_: Round) -> None:
        nonlocal now
        for tp, count in zip(ALL_TPS, round_.fetch, strict=True):
            chunk = queues[tp][taken[tp] : taken[tp] + count]
            taken[tp] += len(chunk)
            fast.add(tp, chunk)
            slow.add(tp, chunk)
        now += round_.advance_s
        got = fast.release(round_.caught_up, now, round_.limit)
        want = slow.release(round_.caught_up, now, round_.limit)
        assert got == want
        assert fast.forced == slow.forced
        assert fast.held == slow.held
        assert fast._next == slow._next

    for round_ in schedule:
        play(round_)
    # Then everything arrives; each gap holds its partition number up to the deadline.
    drain = Round((10_000,) * len(ALL_TPS), frozenset(ALL_TPS), 10_000, 5.0)
    for _ in range(2 + 2 * len(plan)):
        play(drain)
        if fast.held == 0:
            break
    assert fast.held == 0


def test_a_run_stops_where_another_topic_holds_the_next_number() -> None:
    """p1 sends odds 1-3, a market at 4, odds 5-6: released 1..6 in order."""
    plan = [Send(b"p1", t, 0, False) for t in ("odds",) * 3 + ("markets",) + ("odds",) * 2]
    queues = queues_of(plan, {})
    merge = CrossTopicMerge(TOPICS, 1.0)
    for tp in ALL_TPS:
        merge.expect(tp, 0)
        merge.add(tp, queues[tp])
    released = merge.release(set(), 0.0, 100)
    assert [r.value for r in released] == [b"0", b"1", b"2", b"3", b"4", b"5"]
