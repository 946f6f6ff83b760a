"""A stamped message arriving at a gateway's relay (``docs/observability.md``): the
``redis`` and ``pipeline`` stages and the fan-out pass it starts, and its
``gateway.fanout`` span, around the relay's dispatch of it."""

from __future__ import annotations

from opentelemetry.trace import Span

from channels import traces
from channels.hub import Hub
from channels.metrics import FanoutClock, observe_arrival
from channels.stamps import Stamps, now_us, read_envelope


class Arrival:
    """Made by :meth:`of` before the relay dispatches a message, :meth:`done` after."""

    __slots__ = ("_clock", "_delivered", "_hub", "_span", "_stamps", "received")

    def __init__(
        self, stamps: Stamps, clock: FanoutClock | None, hub: Hub, span: Span | None
    ) -> None:
        self._stamps = stamps
        self._clock = clock
        self._hub = hub
        self._span = span
        self._delivered = hub.delivered
        self.received = clock.now() if clock is not None else 0.0
        """Monotonic receive time (0: not observing), stamped on the frames made of it."""

    @classmethod
    def of(cls, head: bytes, clock: FanoutClock | None, hub: Hub) -> Arrival | None:
        """The arrival of a message with envelope line ``head``; None when neither
        metrics nor traces look at it (or the envelope is of another version). Raises
        :class:`ValueError` when the line does not parse."""
        if clock is not None and not clock.enabled:
            clock = None
        tracer = traces.state.tracer
        if clock is None and tracer is None:
            return None
        stamps = read_envelope(head)
        if stamps is None:
            return None
        span = None
        if tracer is not None and stamps.trace:
            context = traces.parent(stamps.trace)
            if context is not None:
                span = tracer.start_span(
                    "gateway.fanout", context=context, kind=traces.SpanKind.CONSUMER
                )
        return cls(stamps, clock, hub, span)

    def done(self) -> None:
        """The relay dispatched it: observe what it was offered to."""
        offered = self._hub.delivered - self._delivered
        if self._span is not None:
            self._span.set_attribute("oddstream.fanout.subscribers", offered)
            self._span.end()
        clock = self._clock
        if clock is not None and offered:
            observe_arrival(self._stamps, now_us())
            clock.arrived(self.received)
