"""OpenTelemetry: spans for API requests, actor turns (seen as commits), activity calls with
their attempts, and enqueued messages, which carry a W3C `traceparent` so the work a message
causes, on whichever server, continues the sender's trace.

The tracer provider is the application's: `loom serve` installs the SDK with an OTLP
exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; tests install
one with an in-memory exporter. Without a provider every call here is a no-op."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import context, propagate, trace

TRACER = "loom"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def inject() -> str | None:
    """The current span's traceparent, if a span is active."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def extract(traceparent: str | None) -> context.Context | None:
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def install_from_environment() -> Any:
    """Set a global SDK provider with OTLP/HTTP export when the standard OTEL_* variables ask
    for one; returns it (or None)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "loom")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
