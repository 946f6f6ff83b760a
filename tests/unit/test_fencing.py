"""The fencing rule (:mod:`channels.fencing`), pure, and as ``MemoryStore`` enforces it."""

from __future__ import annotations

import pytest

from channels.fencing import FencedError, admit
from channels.store import Batch, MemoryStore
from protocol import Snapshot


@pytest.mark.parametrize(
    ("stored", "fence", "raised"),
    [
        pytest.param({}, {}, {}, id="unfenced"),
        pytest.param({}, {0: 1}, {0: 1}, id="nothing-stored-takes-the-token"),
        pytest.param({0: None}, {0: 3}, {0: 3}, id="lost-token-is-set-again"),
        pytest.param({0: 2}, {0: 2}, {}, id="same-token-changes-nothing"),
        pytest.param({0: 2}, {0: 5}, {0: 5}, id="lower-token-is-raised"),
        pytest.param({0: 2, 1: 7}, {0: 2, 1: 9}, {1: 9}, id="only-lower-ones-raised"),
        pytest.param({3: 8}, {0: 1}, {0: 1}, id="other-partitions-do-not-matter"),
    ],
)
def test_admitted(
    stored: dict[int, int | None], fence: dict[int, int], raised: dict[int, int]
) -> None:
    assert admit(stored, fence) == raised


@pytest.mark.parametrize(
    ("stored", "fence"),
    [
        pytest.param({0: 2}, {0: 1}, id="older-token"),
        pytest.param({0: 1, 1: 4}, {0: 1, 1: 3}, id="one-older-partition-refuses-all"),
    ],
)
def test_refused(stored: dict[int, int | None], fence: dict[int, int]) -> None:
    with pytest.raises(FencedError, match="belongs to a newer owner"):
        admit(stored, fence)
    assert not FencedError.retriable


def book(seq: int) -> Snapshot:
    return Snapshot(
        market_id="m1",
        event_id="ev1",
        seq=seq,
        epoch="e1",
        ts=seq,
        sport="football",
        kind="1x2",
        name="Match result",
        status="open",
        selections=(),
    )


async def test_memory_store_refuses_the_older_owner_and_writes_nothing() -> None:
    store = MemoryStore()
    old = await store.claim(0)
    await store.write(Batch(snapshots={"m1": book(1)}, offsets={("odds", 0): 5}, fence={0: old}))
    new = await store.claim(0)
    assert new > old
    with pytest.raises(FencedError):
        await store.write(
            Batch(snapshots={"m1": book(2)}, offsets={("odds", 0): 6}, fence={0: old})
        )
    assert await store.snapshot("m1") == book(1)
    assert await store.offsets("odds", 0) == 5
    await store.write(Batch(snapshots={"m1": book(2)}, offsets={("odds", 0): 6}, fence={0: new}))
    assert await store.snapshot("m1") == book(2)


async def test_memory_store_claims_count_up_per_partition() -> None:
    store = MemoryStore()
    assert [await store.claim(0), await store.claim(0), await store.claim(1)] == [1, 2, 1]
    # A write with a higher token (storage lost its counters meanwhile) raises the stored
    # one, so the next claim is higher still.
    await store.write(Batch(offsets={("odds", 1): 1}, fence={1: 9}))
    assert await store.claim(1) == 10
