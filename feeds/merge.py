"""Putting the records of the co-partitioned feed topics back in send order, sans I/O:
:class:`CrossTopicMerge` (see its docstring). The book processor's Kafka shell
(:mod:`feeds.books_runner`) feeds it fetched records and applies what it releases."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Container, Iterable, Mapping, Sequence

import msgspec

from feeds.processor import FeedRecord

TP = tuple[str, int]
"""(topic, partition)."""
MergeKey = tuple[int, int, int]
"""(record timestamp ms, producer sequence or 0, topic rank): the watermark order."""


class MergeItem(msgspec.Struct, frozen=True, gc=False):
    """One fetched record with what the merge orders it by."""

    record: FeedRecord
    key: MergeKey
    producer: bytes | None
    seq: int


class _Queue:
    __slots__ = ("items", "last_key", "next_offset", "tp")

    def __init__(self, tp: TP, next_offset: int | None):
        self.tp = tp
        self.items: deque[MergeItem] = deque()
        self.last_key: MergeKey | None = None
        self.next_offset = next_offset


class CrossTopicMerge:
    """Puts the records of the feed topics of each partition number back in send order.

    Kafka orders records within one partition only. ``markets``, ``odds`` and
    ``results`` are separate partitions, written and fetched independently: a full
    ``odds`` batch is sent before a lingering ``markets`` batch, and a fetch can return
    a market's prices before the definition sent just before them, or a price after the
    close that followed it. An event's messages share a partition number on every feed
    topic, so order matters only among the (three) queues of one partition number, and
    this merge restores it there. Each queue stays in offset order; the queues are merged
    by, in turn:

    1. **The producer's sequence.** :class:`~feeds.kafka_feed.KafkaFeedProducer` numbers
       the records it sends to each partition number (``oddstream-order`` header). Once
       the merge knows the next number of a producer, it releases exactly that record
       next (and holds a later one until the gap is filled). A producer's number 1 is
       always next, so a feed written by producers started while this runner tails the
       topics is applied in exactly the order it was sent.
    2. **A watermark**, for a record whose producer's next number is not known (the
       first record after a restore or a hand-over, in mid-stream) or that has no header
       (another producer): by (record timestamp, sequence number, topic rank: ``markets``
       first), and only when no other queue of the partition number can still deliver
       an earlier record: each holds a record, has reached the high watermark of its
       last fetch, or already delivered a later key. That is reliable for a backlog
       (what was written before the restore); for records still in flight from the
       producer it is a best effort.
    3. **A deadline**: when a partition number has been stuck for ``max_hold_s`` (nothing
       releasable), its earliest record is released anyway, so a missing record (a
       producer that died between two sends, a topic that stalls) delays its partition
       number but never stops it. Counted in :attr:`forced`; a record of a producer that
       arrives after its successors were forced out is applied as soon as it arrives.

    Limits: an event fed by two producers is ordered between them by their clocks only;
    records of different events are interleaved but never reordered within a queue.
    Records below a queue's ``next_offset`` (already applied, or fetched again after a
    seek) are dropped on entry.
    """

    def __init__(self, topics: Sequence[str], max_hold_s: float):
        self._rank = {t: i for i, t in enumerate(topics)}
        self._max_hold_s = max_hold_s
        self._queues: dict[TP, _Queue] = {}
        self._by_partition: dict[int, list[_Queue]] = {}
        self._next: dict[int, dict[bytes, int]] = {}
        """Per partition number: the next sequence number of each producer."""
        self._blocked_since: dict[int, float] = {}
        self.forced = 0
        """Records released by the deadline rather than by order."""

    def rank(self, topic: str) -> int | None:
        return self._rank.get(topic)

    def expect(self, tp: TP, next_offset: int | None) -> None:
        """(Re)start a queue empty, dropping records below ``next_offset`` from now on."""
        queue = _Queue(tp, next_offset)
        old = self._queues.get(tp)
        self._queues[tp] = queue
        queues = self._by_partition.setdefault(tp[1], [])
        if old is not None:
            queues.remove(old)
        queues.append(queue)

    def clear(self) -> None:
        """Drop every queue (partitions revoked). The producers' sequence numbers are
        kept: they stay valid for partitions whose books are kept."""
        self._queues.clear()
        self._by_partition.clear()
        self._blocked_since.clear()

    def forget(self, partition: int) -> None:
        """Forget the producers' sequence numbers of a partition number (its books were
        dropped or restored from the store)."""
        self._next.pop(partition, None)

    def add(self, tp: TP, items: Iterable[MergeItem]) -> None:
        """Append fetched records of ``tp``, in offset order."""
        queue = self._queues.get(tp)
        if queue is None:
            self.expect(tp, None)
            queue = self._queues[tp]
        fresh = list(items)
        floor = queue.next_offset
        if floor is not None and fresh and fresh[0].record.offset < floor:
            fresh = [item for item in fresh if item.record.offset >= floor]
        if fresh:
            queue.items.extend(fresh)
            last = fresh[-1]
            queue.last_key = last.key
            queue.next_offset = last.record.offset + 1

    def pending(self, tp: TP) -> int:
        queue = self._queues.get(tp)
        return 0 if queue is None else len(queue.items)

    @property
    def held(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def tps(self) -> list[TP]:
        return list(self._queues)

    def release(self, caught_up: Container[TP], now: float, limit: int) -> list[FeedRecord]:
        """Records that may be applied now, in send order per partition number; at most
        ``limit`` (the rest stay queued). ``caught_up`` names the queues whose consumer
        position has reached the partition's high watermark."""
        out: list[FeedRecord] = []
        for partition, queues in self._by_partition.items():
            nexts = self._next.setdefault(partition, {})
            while len(out) < limit:
                heads = [q for q in queues if q.items]
                if not heads:
                    break
                if len(heads) > 1:
                    heads.sort(key=_head_key)
                chosen = self._choose(heads, queues, nexts, caught_up)
                if chosen is None:
                    # The deadline runs from when the partition number got stuck, not
                    # from when its records arrived: in a backlog they wait for
                    # throughput, which is no reason to give up on order.
                    since = self._blocked_since.setdefault(partition, now)
                    if now - since < self._max_hold_s:
                        break
                    chosen = heads[0]
                    self.forced += 1
                self._blocked_since.pop(partition, None)
                item = chosen.items.popleft()
                out.append(item.record)
                producer = item.producer
                if producer is None:
                    continue
                expected = nexts[producer] = max(nexts.get(producer, 0), item.seq + 1)
                # A run, without sorting and choosing again for each record: while the
                # chosen queue's next record is this producer's next number, and every
                # other head is a later record of the same producer (so none of them may
                # go first), _choose would pick the chosen queue again.
                bound = _run_bound(heads, chosen, producer)
                if bound <= expected:
                    continue
                items = chosen.items
                while items and len(out) < limit and expected < bound:
                    head = items[0]
                    if head.seq != expected or head.producer != producer:
                        break
                    out.append(items.popleft().record)
                    expected += 1
                nexts[producer] = expected
        return out

    @staticmethod
    def _choose(
        heads: Sequence[_Queue],
        queues: Sequence[_Queue],
        nexts: Mapping[bytes, int],
        caught_up: Container[TP],
    ) -> _Queue | None:
        watermark_ok: bool | None = None
        for queue in heads:
            item = queue.items[0]
            if item.producer is not None:
                expected = nexts.get(item.producer)
                if expected is not None:
                    if item.seq <= expected:
                        return queue  # Its turn (or late, after a deadline: apply it now).
                    continue  # An earlier record of this producer is still to come.
                if item.seq == 1:
                    return queue  # A new producer's first record.
            if watermark_ok is None:
                watermark_ok = _below_watermark(item.key, queues, caught_up)
            if watermark_ok:
                return queue
        return None


def _head_key(queue: _Queue) -> MergeKey:
    return queue.items[0].key


def _run_bound(heads: Sequence[_Queue], chosen: _Queue, producer: bytes) -> int | float:
    """The lowest number among the other heads if all are records of ``producer`` (the
    chosen queue's records may run up to it); 0 if another head is not."""
    bound: int | float = math.inf
    for queue in heads:
        if queue is not chosen:
            head = queue.items[0]
            if head.producer != producer:
                return 0
            bound = min(bound, head.seq)
    return bound


def _below_watermark(key: MergeKey, queues: Sequence[_Queue], caught_up: Container[TP]) -> bool:
    # No empty queue that is still catching up may deliver a record ordered before key.
    for queue in queues:
        if queue.items or queue.tp in caught_up:
            continue
        if queue.last_key is None or not key < queue.last_key:
            return False
    return True
