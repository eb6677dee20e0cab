"""Span export over OTLP/HTTP (protobuf) with OpenTelemetry's batch processor.

Imported only when tracing is on. The batch processor exports from its own thread; in front
of it a bounded admission count (``MAX_QUEUE`` spans submitted but not yet handed to the
exporter) drops spans beyond it and counts them, so a slow or absent collector costs memory
up to that bound and never blocks the event loop.
"""

from __future__ import annotations

import atexit
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .tracing import CLIENT, Span

MAX_QUEUE = 2048
SCHEDULE_DELAY_MS = 1000
EXPORT_TIMEOUT_S = 5
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SCOPE = InstrumentationScope("remora-proxy")


class _Counting(SpanExporter):
    def __init__(self, inner: SpanExporter, sink: OtlpSink) -> None:
        self.inner, self.sink = inner, sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.sink.handed += len(spans)
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.sink.exported += len(spans)
        else:
            self.sink.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class OtlpSink:
    def __init__(self, endpoint: str, service_name: str) -> None:
        self.resource = Resource.create({"service.name": service_name})
        self.submitted = self.handed = self.exported = self.failed = self.dropped = 0
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S)
        self.processor = BatchSpanProcessor(
            _Counting(exporter, self), max_queue_size=MAX_QUEUE + 512,
            schedule_delay_millis=SCHEDULE_DELAY_MS, max_export_batch_size=512)
        atexit.register(self.processor.shutdown)  # export what is queued when the proxy exits

    def submit(self, span: Span, end_ns: int) -> None:
        if self.submitted - self.handed >= MAX_QUEUE:
            self.dropped += 1
            return
        self.submitted += 1
        parent = (SpanContext(span.trace_id, span.parent_id, is_remote=True, trace_flags=_SAMPLED)
                  if span.parent_id else None)
        status = span.attributes.get("http.status_code", 0)
        failed = not isinstance(status, int) or status == 0 or status >= 500
        self.processor.on_end(ReadableSpan(
            name=span.name,
            context=SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=_SAMPLED),
            parent=parent, resource=self.resource, attributes=span.attributes,
            kind=SpanKind.CLIENT if span.kind == CLIENT else SpanKind.SERVER,
            start_time=span.start_ns, end_time=end_ns,
            status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
            instrumentation_scope=_SCOPE,
        ))

    def set_service(self, name: str) -> None:
        self.resource = Resource.create({"service.name": name})

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.processor.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK is untyped here

    def render(self) -> str:
        out = []
        for name, value in (("exported", self.exported), ("dropped", self.dropped),
                            ("export_failed", self.failed)):
            out.append(f"# TYPE remora_tracing_spans_{name}_total counter")
            out.append(f"remora_tracing_spans_{name}_total {value}")
        return "\n".join(out) + "\n"
