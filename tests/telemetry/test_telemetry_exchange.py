"""The exchange reports Istio telemetry once: Exchange.done is the one call of
stats.exchange_done, the access log and Tracer.end, whatever relay fed it (no root)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from telemetry_kit import SpanSink

from control_plane.api.model import Cluster, Endpoint, OutboundPort, ProxyConfig, WorkloadMeta
from sidecar.accesslog import AccessLog
from sidecar.http.exchange import (
    Decision,
    Exchange,
    grpc_status,
    span_name,
    upstream_cluster,
)
from sidecar.labels import Labeler
from sidecar.stats import Stats
from sidecar.tracing import Tracer

WEB = WorkloadMeta("web", "demo", "web", "v1", "web")
REVIEWS = WorkloadMeta("reviews-v2", "demo", "reviews", "v2", "reviews")
HOST = "reviews.demo.svc.cluster.local"
REVIEWS_ID = "spiffe://cluster.local/ns/demo/sa/reviews"
EP = Endpoint("198.18.0.22", 9080, REVIEWS_ID, workload=REVIEWS)
PORT = OutboundPort(HOST, ("198.19.0.9",), 9080, "http", f"{HOST}|9080")



@dataclass
class Ctx:
    router: object = None
    outbound_port: OutboundPort | None = PORT
    inbound_target: tuple[str, int] | None = None
    peer_identity: str | None = None
    local_identity: str | None = None
    current_router: object = None
    original_dst: tuple[str, int] | None = ("198.19.0.9", 9080)
    authorizer: object = None
    stats: Stats = field(default_factory=Stats)
    labels: Labeler | None = None
    tracer: Tracer | None = None
    access_log: AccessLog | None = None


def labeler() -> Labeler:
    lab = Labeler()
    lab.update(ProxyConfig(clusters=(Cluster(f"{HOST}|9080", HOST, 9080, "http", (EP,)),),
                           workload=WEB), "spiffe://cluster.local/ns/demo/sa/web")
    return lab


def read_lines(fd: int) -> list[dict]:
    return [json.loads(line) for line in os.read(fd, 65536).decode().splitlines()]


def test_done_reports_metrics_access_log_and_span_once() -> None:
    r, w = os.pipe()
    sink = SpanSink()
    ctx = Ctx(labels=labeler(), tracer=Tracer(100.0, sink), access_log=AccessLog("json", w))
    ex = Exchange(ctx)  # type: ignore[arg-type]
    headers = [(b"host", b"reviews:9080"), (b"user-agent", b"t/1")]
    ex.method, ex.path, ex.req_headers, ex.protocol = b"POST", b"/r", headers, "HTTP/1.1"
    forward = ex.trace(ctx.tracer, headers, b"POST", b"/r", "HTTP/1.1")  # type: ignore[arg-type]
    assert [n for n, _ in forward][:1] == [b"traceparent"]
    ex.route_to(EP, HOST)
    ex.peer, ex.request_id = REVIEWS_ID, b"rid-1"
    ex.req_bytes, ex.resp_bytes = 7, 11
    ex.add_flag("UT")
    assert ex.done(504) and not ex.done(200)
    ctx.access_log.flush()  # type: ignore[union-attr]
    (series,) = ctx.stats.http.items()
    (key, code, grpc, flags), values = series
    assert (code, grpc, flags, values[0]) == (504, "", "UT", 1)
    assert 'reporter="source"' in key and f'destination_service="{HOST}"' in key
    assert 'destination_workload="reviews-v2"' in key
    (line,) = read_lines(r)
    cluster = f"outbound|9080||{HOST}"
    assert (line["method"], line["path"], line["response_code"], line["response_flags"],
            line["bytes_received"], line["bytes_sent"], line["upstream_host"],
            line["upstream_cluster"], line["upstream_peer_uri_san"], line["request_id"],
            line["authority"]) == ("POST", "/r", 504, "UT", 7, 11, "198.18.0.22:9080", cluster,
                                   REVIEWS_ID, "rid-1", "reviews:9080")
    (span,) = sink.spans
    assert line["trace_id"] == f"{span.trace_id:032x}"
    assert (span.attributes["upstream_cluster"], span.attributes["http.status_code"],
            span.attributes["response_flags"], span.attributes["guid:x-request-id"],
            span.attributes["request_size"]) == (cluster, 504, "UT", "rid-1", 7)
    assert span.name == f"{HOST}:9080/*" and span.kind == "client"
    os.close(r)
    os.close(w)


def test_without_labels_tracer_or_log_only_the_remora_series() -> None:
    ctx = Ctx()
    ex = Exchange(ctx)  # type: ignore[arg-type]
    ex.route_to(EP, HOST)
    assert ex.lkey == "" and ex.done(200)
    assert ctx.stats.http == {} and sum(ctx.stats.requests.values()) == 1


def test_unrouted_requests_carry_nr_or_uh() -> None:
    for status, service, flag in ((404, HOST, "NR"), (503, "", "NR"), (503, HOST, "UH")):
        ctx = Ctx(labels=labeler())
        ex = Exchange(ctx)  # type: ignore[arg-type]
        ex.unrouted(Decision(None, None, 0.0, service, status=status))
        ex.done(status)
        ((_, code, _, flags),) = ctx.stats.http
        assert (code, flags) == (status, flag)


def test_inbound_names_and_grpc_status() -> None:
    ctx = Ctx(inbound_target=("10.0.0.7", 8080), outbound_port=None, original_dst=None,
              labels=Labeler())
    assert upstream_cluster(ctx, "inbound|8080") == "inbound|8080||"  # type: ignore[arg-type]
    assert span_name(ctx) == "inbound:8080/*"  # type: ignore[arg-type]
    ctx.labels.inbound_services[("10.0.0.7", 8080)] = HOST  # type: ignore[union-attr]
    assert span_name(ctx) == f"{HOST}:8080/*"  # type: ignore[arg-type]
    assert grpc_status([(b"grpc-message", b"x"), (b"grpc-status", b"14")]) == "14"
    assert grpc_status(None) == grpc_status([]) == ""
