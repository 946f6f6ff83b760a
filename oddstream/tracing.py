"""``--traces``: OpenTelemetry for one process role (``docs/observability.md``). Off by
default; ``otlp`` exports every sampled span with OTLP, configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables (read by the exporter). The feed samples its root
spans at ``--trace-sample``; books and gateways only follow a sampled parent."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from channels import traces
from oddstream.process import Failed


@contextlib.contextmanager
def traced(role: str, mode: str, sample: float = 0.0) -> Iterator[None]:
    """Trace the block's hops (``mode`` ``otlp``) and flush the spans at its end."""
    if mode != "otlp":
        yield
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise Failed(
            2, "--traces otlp needs the OTLP exporter: pip install 'oddstream[otlp]'"
        ) from None
    root = TraceIdRatioBased(sample) if sample > 0 else ALWAYS_OFF
    provider = TracerProvider(
        sampler=ParentBased(root),
        resource=Resource.create({"service.name": f"oddstream-{role}"}),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    traces.install(provider)
    try:
        yield
    finally:
        traces.uninstall()
        provider.shutdown()
