"""The book processor's steps, sans I/O: what a step is, how two overlap, how a rebase cuts
in, and what is written and committed when. The Kafka shell (:mod:`feeds.books_runner`)
performs the I/O this decides; tests drive it without Kafka or Redis.

A **step** is one batch of feed records applied to the books at once
(:meth:`feeds.processor.Processor.process`): its snapshots, deltas and dead letters and
the feed offsets they reflect. Its I/O goes through these phases, in this order:

1. ``STORING``: dead letters to the ``deadletter`` topic, then storage (snapshots, history
   and the offsets, atomically) and pub/sub;
2. ``STORED``;
3. ``SENDING``: deltas to the ``deltas`` topic, then the Kafka commit of the offsets;
4. done: the step leaves the pipeline, and only now is it counted.

**Overlap.** A step is applied while the one before it is being stored and the one
before that is being sent: the feed's next step is applied only while at most two are in
the pipeline (:attr:`StepPipeline.has_room`, the back-pressure, waited for *before*
applying); a step may start storing once every earlier step is stored
(:meth:`StepPipeline.may_store`), and may start sending once every earlier step is done
(:meth:`StepPipeline.may_send`). So each phase runs one step at a time, in step order; at
most two steps do I/O at once. A staleness step (:meth:`~feeds.processor.Processor.tick`)
does not wait for room: it is applied and stored while Kafka does not answer, so clients
learn of an outage through storage and pub/sub.

**Rebase.** When storage lost its data, every book is stored again under a new epoch
(:meth:`StepPipeline.rebase` starts a new generation). A step applied in an earlier
generation is part of what the rebase stored: it must not store its own, old-epoch
snapshots and deltas over it (:meth:`StepPipeline.storing` says so); it still sends
and commits.

**Failure.** A step whose I/O fails fails the pipeline (:meth:`StepPipeline.fail`); the
failure is sticky, every waiter sees it, and the processor ends (the next owner
restores from storage, which is the authority on where each partition stands).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from feeds.processor import Step


class Phase(enum.IntEnum):
    APPLIED = 0
    STORING = 1
    STORED = 2
    SENDING = 3
    DONE = 4


@dataclass(eq=False, slots=True)
class Flight:
    """A step in the pipeline: applied to the books, its I/O not yet done."""

    step: Step
    generation: int
    records: int
    """Feed records applied or dead-lettered."""
    skipped: int
    """Records below the restored offsets."""
    phase: Phase = Phase.APPLIED


class StepPipeline:
    """The steps applied and not yet done, in step order, and the rules above."""

    __slots__ = ("_flights", "failure", "generation")

    def __init__(self) -> None:
        self._flights: deque[Flight] = deque()
        self.generation = 0
        """Rebases so far."""
        self.failure: BaseException | None = None

    def apply(self, step: Step, records: int, skipped: int) -> Flight:
        """A step was applied to the books; it waits to store (:meth:`may_store`)."""
        flight = Flight(step, self.generation, records, skipped)
        self._flights.append(flight)
        return flight

    @property
    def has_room(self) -> bool:
        """Whether the feed's next step may be applied: at most two are in the pipeline."""
        return len(self._flights) <= 2

    def may_store(self, flight: Flight) -> bool:
        """Whether ``flight`` may start its I/O: every step before it is stored."""
        return all(f.phase >= Phase.STORED for f in self._earlier(flight))

    def storing(self, flight: Flight) -> bool:
        """``flight`` starts its I/O; False when a rebase since it was applied already
        stored it (write dead letters only, then go on to sending)."""
        flight.phase = Phase.STORING
        return flight.generation == self.generation

    def stored(self, flight: Flight) -> None:
        flight.phase = Phase.STORED

    def may_send(self, flight: Flight) -> bool:
        """Whether ``flight`` may produce its deltas and commit: it is the oldest step."""
        return bool(self._flights) and self._flights[0] is flight

    def sending(self, flight: Flight) -> None:
        flight.phase = Phase.SENDING

    def done(self, flight: Flight) -> None:
        """``flight`` is sent and committed: it leaves the pipeline (the oldest)."""
        if not self.may_send(flight):
            raise RuntimeError("steps are done in step order")
        flight.phase = Phase.DONE
        self._flights.popleft()

    def rebase(self) -> None:
        """Storage is re-filled from the books as they are: the steps applied so far are
        in it."""
        self.generation += 1

    def fail(self, exc: BaseException) -> None:
        """A step's I/O failed; the first failure is kept."""
        if self.failure is None:
            self.failure = exc

    @property
    def settled(self) -> bool:
        """No step is in the pipeline: storage, pub/sub and Kafka hold every step."""
        return not self._flights

    @property
    def in_flight(self) -> tuple[Flight, ...]:
        return tuple(self._flights)

    def _earlier(self, flight: Flight) -> list[Flight]:
        earlier: list[Flight] = []
        for f in self._flights:
            if f is flight:
                return earlier
            earlier.append(f)
        raise ValueError("not a step in the pipeline")
