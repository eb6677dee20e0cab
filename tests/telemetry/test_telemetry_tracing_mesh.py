"""Tracing through real proxies (real control plane, mTLS): an incoming traceparent reaches the
app with the same trace id and a new parent; both proxies' spans arrive at a real OTLP/HTTP
receiver with intact parent/child links; B3 is propagated; the sampling rate holds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from cp_mesh import CONTROL_IP, CpMesh, service, wait_for
from mesh_harness import APP_UID, APPS
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from telemetry_kit import cp_mesh_on

from local_cluster import netns

pytestmark = pytest.mark.root
HERE = Path(__file__).resolve().parent
RECEIVER = HERE.parents[1] / "perf" / "bench" / "otlp_receiver.py"
NS, VIP, PORT = "demo", "198.19.0.41", 8080
URL = f"http://web.{NS}:{PORT}"
OTLP_PORT = 4318
SAMPLING = 20.0  # percent
N = 400  # requests for the sampling check
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def mesh(module_node):
    env = {"REMORA_TRACE_ENDPOINT": f"http://{CONTROL_IP}:{OTLP_PORT}/v1/traces",
           "REMORA_TRACE_SAMPLING": str(SAMPLING)}
    with cp_mesh_on(module_node, **env) as m:
        spans_dir = m.tmp / "spans"
        spans_dir.mkdir()
        receiver = netns.spawn_in(module_node.netns, [
            sys.executable, str(RECEIVER), CONTROL_IP, str(OTLP_PORT), str(spans_dir)])
        m.apps.append(receiver)  # stopped with the mesh
        m.apply("svc", service("web", NS, VIP, PORT, {"app": "web"}))
        server = m.add_pod("web", NS, "web", {"app": "web", "version": "v1"})
        client = m.add_pod("client", NS, "client", {"app": "client"}, hosts={f"web.{NS}": VIP})
        m.apps.append(server.spawn([sys.executable, APPS, "http", str(PORT)], uid=APP_UID, gid=APP_UID))
        wait_for(lambda: server.exec(["ss", "-Hltn", f"sport = :{PORT}"]).stdout.strip(), 10, "app")
        m.wait_synced(["client.demo", "web.demo"])
        m.spans_dir, m.client = spans_dir, client
        yield m


def run(m: CpMesh, path: str, n: int, *headers: str) -> list[dict]:
    r = m.client.exec([sys.executable, str(HERE / "trace_client.py"), URL + path, str(n), *headers],
                      uid=APP_UID, gid=APP_UID, timeout=60)
    assert r.returncode == 0, (r.stderr, m.logs())
    return json.loads(r.stdout)


def received(m: CpMesh) -> list[tuple[str, PbSpan]]:
    """(service.name of the sender, span) for every span the receiver got so far."""
    out = []
    for f in sorted(m.spans_dir.glob("*.pb")):
        req = ExportTraceServiceRequest.FromString(f.read_bytes())
        for rs in req.resource_spans:
            name = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            out += [(name, s) for ss in rs.scope_spans for s in ss.spans]
    return out


def spans_of(m: CpMesh, trace_hex: str, count: int) -> list[tuple[str, PbSpan]]:
    trace = bytes.fromhex(trace_hex)
    return wait_for(lambda: (lambda got: got if len(got) >= count else None)(
        [(n, s) for n, s in received(m) if s.trace_id == trace]), 10, f"{count} spans of {trace_hex}")


def attrs(span: PbSpan) -> dict:
    return {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}


def test_traceparent_reaches_the_app_with_a_new_parent_and_both_spans_are_linked(mesh) -> None:
    (resp,) = run(mesh, "/headers", 1, f"traceparent:00-{TRACE}-{PARENT}-01", "tracestate:vendor=x")
    seen = resp["body"]
    version, trace, parent, flags = seen["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert parent != PARENT
    assert seen["tracestate"] == "vendor=x"  # forwarded untouched
    assert seen["x-b3-traceid"] == TRACE and seen["x-b3-spanid"] == parent
    spans = spans_of(mesh, TRACE, 2)
    (client,) = [s for _, s in spans if s.kind == PbSpan.SPAN_KIND_CLIENT]
    (server,) = [s for _, s in spans if s.kind == PbSpan.SPAN_KIND_SERVER]
    assert client.parent_span_id == bytes.fromhex(PARENT)  # the app's span
    assert server.parent_span_id == client.span_id  # client proxy -> server proxy
    assert server.span_id == bytes.fromhex(parent)  # server proxy -> the app's parent
    services = {s.kind: n for n, s in spans}
    assert services == {PbSpan.SPAN_KIND_CLIENT: "client.demo", PbSpan.SPAN_KIND_SERVER: "web.demo"}
    c, s = attrs(client), attrs(server)
    assert c["upstream_cluster"] == f"outbound|{PORT}||web.{NS}.svc.cluster.local"
    assert s["upstream_cluster"] == f"inbound|{PORT}||"
    assert (c["http.status_code"], s["http.status_code"]) == (200, 200)
    assert c["response_flags"] == s["response_flags"] == "-"
    assert c["peer.principal"] == f"spiffe://cluster.local/ns/{NS}/sa/web"
    assert s["peer.principal"] == f"spiffe://cluster.local/ns/{NS}/sa/client"
    assert c["guid:x-request-id"] == s["guid:x-request-id"] == seen["x-request-id"]
    assert (c["http.method"], c["http.url"], c["component"]) == ("GET", "/headers", "proxy")
    assert client.name == f"web.{NS}.svc.cluster.local:{PORT}/*"


def test_b3_multi_headers_are_propagated(mesh) -> None:
    trace = "463ac35c9f6413ad"  # a 64-bit B3 trace id
    (resp,) = run(mesh, "/headers", 1, f"x-b3-traceid:{trace}", "x-b3-spanid:a2fb4a1d1a96d312",
                  "x-b3-sampled:1")
    seen = resp["body"]
    assert seen["x-b3-traceid"] == trace and seen["x-b3-sampled"] == "1"
    assert seen["x-b3-spanid"] != "a2fb4a1d1a96d312"
    assert seen["traceparent"].split("-")[1] == trace.rjust(32, "0")
    spans = spans_of(mesh, trace.rjust(32, "0"), 2)
    assert {s.parent_span_id.hex() for _, s in spans if s.kind == PbSpan.SPAN_KIND_CLIENT} == {
        "a2fb4a1d1a96d312"}


def test_sampling_rate_for_new_traces(mesh) -> None:
    before = {s.span_id for _, s in received(mesh)}
    results = run(mesh, "/", N)
    assert all(r["status"] == 200 for r in results)

    def settled():
        new = [s for _, s in received(mesh) if s.span_id not in before]
        clients = [s for s in new if s.kind == PbSpan.SPAN_KIND_CLIENT]
        servers = [s for s in new if s.kind == PbSpan.SPAN_KIND_SERVER]
        return (clients, servers) if clients and len(servers) == len(clients) else None

    time.sleep(2.5)  # two export periods: every sampled span has been sent
    clients, servers = wait_for(settled, 10, "client and server spans of the sampled traces")
    # Binomial(400, 0.2): mean 80, sd 8; +-4 sd.
    assert 48 <= len(clients) <= 112, len(clients)
    # The server proxy follows the client's decision: exactly the sampled traces, nothing else.
    assert {s.trace_id for s in servers} == {s.trace_id for s in clients}
    assert all(s.parent_span_id for s in servers) and not any(s.parent_span_id for s in clients)
