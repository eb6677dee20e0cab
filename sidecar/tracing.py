"""Spans for requests: a client span in the client's proxy, a server span in the server's.

The hot-path calls are ``Tracer.start`` on a request head and ``Tracer.end`` when the exchange
completes; a relay holds ``tracer = None`` when tracing is off and then makes no call at all.
Only sampled spans reach OpenTelemetry: ``sidecar/otlp.py`` (which imports the SDK) is loaded
when tracing is configured, so a proxy without tracing never imports the SDK.

Span attributes follow Istio's (Envoy's) span tags: ``upstream_cluster``, ``response_flags``,
``http.method``, ``http.url``, ``http.status_code``, ``http.protocol``, ``guid:x-request-id``,
``user_agent``, ``request_size``, ``response_size``, ``peer.address``, ``component: proxy``,
``node_id``, ``istio.canonical_service``, ``istio.namespace``, ``istio.mesh_id``, plus
``peer.principal``: the SPIFFE ID of the other proxy.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

from . import tracecontext

CLIENT, SERVER = "client", "server"
_RID, _UA = b"x-request-id", b"user-agent"


class Span:
    __slots__ = ("trace_id", "span_id", "parent_id", "sampled", "kind", "name", "start_ns",
                 "attributes")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, sampled: bool, kind: str,
                 name: str) -> None:
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.sampled, self.kind, self.name = sampled, kind, name
        self.start_ns = time.time_ns()
        self.attributes: dict[str, str | int] = {}


class Sink(Protocol):
    def submit(self, span: Span, end_ns: int) -> None: ...
    def set_service(self, name: str) -> None: ...
    def render(self) -> str: ...


class Tracer:
    def __init__(self, sampling_percent: float, sink: Sink | None,
                 node_attributes: dict[str, str] | None = None) -> None:
        self.rate = max(0.0, min(100.0, sampling_percent)) / 100.0
        self.sink = sink
        self.node_attributes = dict(node_attributes or {})

    def start(self, headers: list[tuple[bytes, bytes]], kind: str, name: str, method: bytes,
              path: bytes, protocol: str) -> tuple[Span, list[tuple[bytes, bytes]]]:
        """A span for a request with these headers, and the trace headers to forward instead
        of its own (``tracecontext.REPLACED``)."""
        inc = tracecontext.parse(headers)
        if inc is not None and inc.trace_id:
            trace_id, parent = inc.trace_id, inc.span_id
        else:
            trace_id, parent = tracecontext.new_trace_id(), 0
        if inc is not None and inc.sampled is not None:
            sampled = inc.sampled
        else:
            sampled = random.random() < self.rate
        span = Span(trace_id, tracecontext.new_span_id(), parent, sampled, kind, name)
        if sampled:
            a = span.attributes
            a.update(self.node_attributes)
            a["http.method"] = method.decode("latin-1")
            a["http.url"] = path.decode("latin-1")
            a["http.protocol"] = protocol
            for hname, value in headers:
                n = hname.lower()
                if n == _RID:
                    a["guid:x-request-id"] = value.decode("latin-1")
                elif n == _UA:
                    a["user_agent"] = value.decode("latin-1")
        return span, tracecontext.outgoing(trace_id, span.span_id, parent, sampled,
                                           inc.formats if inc is not None else 0)

    def end(self, span: Span, status: int, flags: str, upstream_cluster: str, peer: str | None,
            request_bytes: int, response_bytes: int, request_id: bytes = b"") -> None:
        if not span.sampled or self.sink is None:
            return
        a = span.attributes
        a["http.status_code"] = status
        a["response_flags"] = flags
        a["upstream_cluster"] = upstream_cluster
        a["peer.principal"] = peer or "unknown"
        a["request_size"] = request_bytes
        a["response_size"] = response_bytes
        if request_id and "guid:x-request-id" not in a:
            a["guid:x-request-id"] = request_id.decode("latin-1")
        self.sink.submit(span, time.time_ns())

    def set_workload(self, app: str, namespace: str) -> None:
        """The canonical service, known once the control plane sent this pod's workload."""
        self.node_attributes["istio.canonical_service"] = app
        self.node_attributes["istio.namespace"] = namespace
        if self.sink is not None:
            self.sink.set_service(f"{app}.{namespace}")

    def render(self) -> str:
        return self.sink.render() if self.sink is not None else ""


def h1_rewrite(lines: list[bytes], forward: list[tuple[bytes, bytes]]) -> list[bytes]:
    """An HTTP/1.1 head as lines (request line first): the client's trace headers replaced."""
    kept = [lines[0], *(h for h in lines[1:]
                        if h.split(b":", 1)[0].lower() not in tracecontext.REPLACED)]
    return kept + [b"%s: %s\r\n" % (n, v) for n, v in forward]


def h2_rewrite(headers: list[tuple[bytes, bytes]],
               forward: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [h for h in headers if h[0] not in tracecontext.REPLACED] + forward


def from_settings(endpoint: str, sampling_percent: float, service: str, namespace: str,
                  node_id: str, mesh_id: str) -> Tracer | None:
    """None when no OTLP endpoint is configured: tracing is off and the SDK is never loaded."""
    if not endpoint:
        return None
    from . import otlp  # the OpenTelemetry SDK, only now

    sink = otlp.OtlpSink(endpoint, service_name=f"{service}.{namespace}")
    return Tracer(sampling_percent, sink, {
        "component": "proxy", "node_id": node_id, "istio.canonical_service": service,
        "istio.namespace": namespace, "istio.mesh_id": mesh_id,
    })
