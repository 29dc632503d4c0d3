"""Traces and the request a piece of work belongs to, for the core and the HTTP side alike.

The core imports only ``opentelemetry-api``: ``tracer`` is a proxy that stays a no-op (a few
microseconds per span, nothing recorded or exported) until ``configure_tracing`` installs the
SDK's provider, which ``marquee serve`` does only when traces are asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Literal

from opentelemetry import trace

TraceMode = Literal["off", "console", "otlp"]

tracer = trace.get_tracer("marquee")

# The id of the HTTP request being served (set by the middleware): the vLLM engine forwards it
# as X-Request-ID, so the model server's log lines can be matched with ours.
REQUEST_ID: ContextVar[str | None] = ContextVar("marquee_request_id", default=None)


def trace_mode(setting: TraceMode | None, environ: Mapping[str, str] = os.environ) -> TraceMode:
    """The setting (MARQUEE_TRACES) when given; otherwise OTLP when the standard endpoint
    variables name a collector, and off when they do not."""
    if setting is not None:
        return setting
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if any(environ.get(name) for name in endpoints) else "off"


def configure_tracing(mode: TraceMode) -> bool:
    """Install a recording tracer provider for ``console`` (one JSON span per line on stderr,
    so stdout stays the log stream) or ``otlp`` (batched, to the collector the standard
    ``OTEL_EXPORTER_OTLP_*`` variables name). ``off`` installs nothing. Once per process (the
    global provider cannot be replaced). Returns whether spans are now recorded."""
    if mode == "off":
        return False
    # The SDK and the exporter only load here: the core never needs them.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    name = os.environ.get("OTEL_SERVICE_NAME") or "marquee"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    processor: SpanProcessor
    if mode == "console":
        exporter = ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
        processor = SimpleSpanProcessor(exporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return True
