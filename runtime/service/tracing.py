"""OpenTelemetry: spans for API requests, actor turns (seen as commits), activity calls with
their attempts, guests' HTTP requests, and enqueued messages, which carry a W3C
`traceparent` so the work a message causes, in whichever process, continues the sender's
trace.

The tracer provider is the application's: `loom serve` and `loom worker` install the SDK
with an OTLP/HTTP exporter when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_ENDPOINT`) is set; tests install one with an in-memory exporter (`install`).
Without a provider every call here is a no-op."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import context, propagate, trace

from runtime.executor import http_capability

TRACER = "loom"
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


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


def requested() -> bool:
    """Whether the standard OTEL_* variables ask for OTLP export."""
    return any(os.environ.get(name) for name in ENDPOINTS)


def install(provider: Any) -> Any:
    """Make `provider` (an SDK TracerProvider) the process's, unless one is set already
    (OpenTelemetry allows one per process: then that one stays and is returned), and
    trace guests' HTTP requests."""
    current = trace.get_tracer_provider()
    if hasattr(current, "add_span_processor"):
        provider = current
    else:
        trace.set_tracer_provider(provider)
    http_capability.observer = http_call
    return provider


def install_from_environment(service: str = "loom") -> Any:
    """Install an SDK provider with OTLP/HTTP export when the standard OTEL_* variables ask
    for one (`OTEL_SERVICE_NAME` overrides `service`); returns it (or None)."""
    if not requested():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return install(provider)


@contextlib.contextmanager
def http_call(method: str, url: str,
              headers: dict[str, str]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """The executor's HTTP observer: a client span around a guest's request, whose context
    the request carries as `traceparent` unless the guest set one."""
    with tracer().start_as_current_span(
            f"HTTP {method}", kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": url}) as span:
        if not any(k.lower() == "traceparent" for k in headers):
            propagate.inject(headers)

        def seen(answer: dict[str, Any]) -> None:
            if answer.get("ok"):
                span.set_attribute("http.response.status_code", int(answer.get("status", 0)))
                if int(answer.get("status", 0)) >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
            else:
                code = str((answer.get("error") or {}).get("code", "failed"))
                span.set_attribute("error.type", code)
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))

        yield seen
