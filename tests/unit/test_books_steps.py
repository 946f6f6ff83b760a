"""The book processor's step pipeline (feeds/steps.py), without Kafka or Redis: when a
step may store and send, how two steps overlap, what a rebase does to a step in flight,
and that a failure is seen by every waiter. Table-driven: a script of events, and after
each, what every step may do."""

from __future__ import annotations

import pytest

from feeds.processor import Step
from feeds.steps import Phase, StepPipeline

# A script is a list of (action, step) pairs; steps are named by the order they were
# applied in (1, 2, 3...). After each action: the steps that may store, the steps that
# may send, and the phase of each step still in the pipeline.
Script = list[tuple[str, int]]


def run(script: Script) -> list[tuple[set[int], set[int], dict[int, Phase]]]:
    pipeline = StepPipeline()
    flights = {}
    seen = []
    for action, n in script:
        if action == "apply":
            flights[n] = pipeline.apply(Step(), records=1, skipped=0)
        elif action == "rebase":
            pipeline.rebase()
        else:
            getattr(pipeline, action)(flights[n])
        live = {k: f for k, f in flights.items() if f in pipeline.in_flight}
        seen.append(
            (
                {k for k, f in live.items() if f.phase == Phase.APPLIED and pipeline.may_store(f)},
                {k for k, f in live.items() if f.phase == Phase.STORED and pipeline.may_send(f)},
                {k: f.phase for k, f in live.items()},
            )
        )
    return seen


#: The first step sending, the second stored, a third applied.
THREE_APPLIED: Script = [
    *[("apply", 1), ("storing", 1), ("stored", 1), ("sending", 1)],
    *[("apply", 2), ("storing", 2), ("stored", 2), ("apply", 3)],
]
A, STORING, STORED, SENDING = Phase.APPLIED, Phase.STORING, Phase.STORED, Phase.SENDING

CASES: list[tuple[str, Script, tuple[set[int], set[int], dict[int, Phase]]]] = [
    ("one step may store at once", [("apply", 1)], ({1}, set(), {1: A})),
    (
        "the next step waits while this one is storing",
        [("apply", 1), ("storing", 1), ("apply", 2)],
        (set(), set(), {1: STORING, 2: A}),
    ),
    (
        "it may store once this one is stored; this one may send",
        [("apply", 1), ("storing", 1), ("apply", 2), ("stored", 1)],
        ({2}, {1}, {1: STORED, 2: A}),
    ),
    (
        "a stored step may not send before the one before it is done",
        [("apply", 1), ("storing", 1), ("apply", 2), ("stored", 1), ("storing", 2), ("stored", 2)],
        (set(), {1}, {1: STORED, 2: STORED}),
    ),
    (
        "a third step may store while the first is sent (two do I/O at once, at most)",
        THREE_APPLIED,
        ({3}, set(), {1: SENDING, 2: STORED, 3: A}),
    ),
    (
        "once the first is done, the second may send",
        [*THREE_APPLIED, ("storing", 3), ("done", 1)],
        (set(), {2}, {2: STORED, 3: STORING}),
    ),
    (
        "done empties the pipeline",
        [("apply", 1), ("storing", 1), ("stored", 1), ("sending", 1), ("done", 1)],
        (set(), set(), {}),
    ),
]


@pytest.mark.parametrize(("name", "script", "last"), CASES, ids=[c[0] for c in CASES])
def test_overlap(
    name: str, script: Script, last: tuple[set[int], set[int], dict[int, Phase]]
) -> None:
    assert run(script)[-1] == last


def test_a_step_applied_before_a_rebase_does_not_store_its_own_books() -> None:
    pipeline = StepPipeline()
    first = pipeline.apply(Step(), 1, 0)
    assert pipeline.storing(first)  # Its storage fails, storage is found empty: rebase.
    second = pipeline.apply(Step(), 1, 0)  # Applied while the first was being stored.
    pipeline.rebase()  # Stores every book, the second step's included, under new epochs.
    pipeline.stored(first)
    assert pipeline.may_store(second)
    assert not pipeline.storing(second), "it would write old-epoch books over the rebase"
    third = pipeline.apply(Step(), 1, 0)
    pipeline.stored(second)
    pipeline.sending(first)
    pipeline.done(first)
    assert pipeline.may_store(third)
    assert pipeline.storing(third), "applied after the rebase: its own books are new"


def test_the_feed_waits_for_room_and_a_staleness_step_stores_past_a_stuck_send() -> None:
    """Kafka stops answering while one step is sent and the next two are stored: the
    feed may not apply a fourth step, but a staleness step applied now may still store
    (clients see the suspensions through storage while Kafka is down)."""
    pipeline = StepPipeline()
    flights = []
    for _ in range(3):
        assert pipeline.has_room
        flight = pipeline.apply(Step(), 1, 0)
        assert pipeline.may_store(flight)
        pipeline.storing(flight)
        pipeline.stored(flight)
        flights.append(flight)
    pipeline.sending(flights[0])  # Stuck: Kafka is down.
    assert not pipeline.has_room
    stale = pipeline.apply(Step(), 0, 0)
    assert pipeline.may_store(stale)
    assert not pipeline.may_send(stale)


def test_steps_are_done_in_step_order() -> None:
    pipeline = StepPipeline()
    first, second = pipeline.apply(Step(), 1, 0), pipeline.apply(Step(), 1, 0)
    with pytest.raises(RuntimeError):
        pipeline.done(second)
    pipeline.done(first)
    pipeline.done(second)
    assert pipeline.settled


def test_the_first_failure_is_kept_for_every_waiter() -> None:
    pipeline = StepPipeline()
    pipeline.apply(Step(), 1, 0)
    first, second = OSError("produce"), OSError("later")
    pipeline.fail(first)
    pipeline.fail(second)
    assert pipeline.failure is first
    assert not pipeline.settled


def test_a_flight_not_in_the_pipeline_is_refused() -> None:
    pipeline, other = StepPipeline(), StepPipeline()
    stray = other.apply(Step(), 1, 0)
    with pytest.raises(ValueError, match="not a step"):
        pipeline.may_store(stray)
