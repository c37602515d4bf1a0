"""OpenTelemetry tracing, switched on by ``CLINALIGN_OTEL_ENABLED``.

The gRPC server and client instrumentations put the W3C ``traceparent`` on outgoing calls
and continue it on incoming ones, so one trace id follows a request across services.
Spans carry RPC names, ids and counts; never prompt or output text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from clinalign.common.config import CommonSettings

_lock = threading.Lock()
_instrumented = False


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines to a file: a collector-free local trace sink."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "service": span.resource.attributes.get("service.name"),
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_span_id": format(parent.span_id, "016x") if parent else None,
                        "kind": span.kind.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        with self._lock, self._path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure_tracing(service: str, settings: CommonSettings) -> TracerProvider | None:
    """Installs a tracer provider for this process and instruments gRPC, once."""
    global _instrumented
    if not settings.otel_enabled:
        return None
    with _lock:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            provider.add_span_processor(_processor(service, settings))
            trace.set_tracer_provider(provider)
        if not _instrumented:
            from opentelemetry.instrumentation.grpc import (
                GrpcAioInstrumentorClient,
                GrpcAioInstrumentorServer,
            )

            GrpcAioInstrumentorServer().instrument()
            GrpcAioInstrumentorClient().instrument()
            _instrumented = True
    return provider


def _processor(service: str, settings: CommonSettings) -> SimpleSpanProcessor | BatchSpanProcessor:
    if settings.otel_exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if settings.otel_exporter == "file":
        path = settings.otel_file or settings.data_dir / "traces" / f"{service}.jsonl"
        return SimpleSpanProcessor(JsonLinesSpanExporter(path))
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint))
