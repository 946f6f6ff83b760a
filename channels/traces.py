"""Traces: the OpenTelemetry tracer every hop uses, off until :func:`install` (the
composition root's ``--traces``, or a test's in-memory exporter), and the W3C
``traceparent`` that carries a span's context between processes (Kafka header, pub/sub
envelope: ``docs/observability.md``).

While off, :data:`state.tracer` is None and each hop pays one test of it per message.
Sampling is the provider's: the feed's root spans are sampled by ratio, the rest follow
their parent, so a hop starts a span only when its message carries a sampled context.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TracerProvider,
    set_span_in_context,
)

__all__ = ["SpanKind", "install", "link", "parent", "state", "traceparent", "uninstall"]


class _State:
    tracer: Tracer | None = None


state = _State()
"""``state.tracer``: the tracer of every hop, None while tracing is off."""


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (its sampler and exporters)."""
    state.tracer = provider.get_tracer("oddstream")


def uninstall() -> None:
    state.tracer = None


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` of a sampled span; None when it is not sampled."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _span_context(value: str | bytes) -> SpanContext | None:
    """The remote span context of a ``traceparent`` (version 00); None when it does not
    parse or is not sampled (only sampled contexts are ever sent)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    parts = text.split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return ctx if ctx.is_valid and ctx.trace_flags.sampled else None


def parent(value: str | bytes) -> Context | None:
    """The context to start a child span in, from a ``traceparent``; None when invalid."""
    ctx = _span_context(value)
    return None if ctx is None else set_span_in_context(NonRecordingSpan(ctx))


def link(values: Sequence[str | bytes]) -> list[Link]:
    """Links to the spans of ``traceparent`` values (the invalid ones left out)."""
    return [Link(ctx) for v in values if (ctx := _span_context(v)) is not None]
