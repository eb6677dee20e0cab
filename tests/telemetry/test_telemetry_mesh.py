"""Istio's standard metrics from real traffic between meshed pods (real control plane, real
proxies, mTLS): HTTP/1.1, HTTP/2 and an opaque TCP connection, read from both proxies'
:15090/metrics with prometheus_client's parser."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from cp_mesh import service, wait_for
from mesh_harness import APP_UID, APPS
from prometheus_client.parser import text_string_to_metric_families
from promql_refs import DASHBOARDS, expressions, load, refs
from telemetry_kit import cp_mesh_on

pytestmark = pytest.mark.root
NS = "demo"
WEB_VIP, H2_VIP, CACHE_VIP, DOWN_VIP = "198.19.0.31", "198.19.0.32", "198.19.0.33", "198.19.0.34"
CLIENT_ID = f"spiffe://cluster.local/ns/{NS}/sa/client"
SERVER_ID = f"spiffe://cluster.local/ns/{NS}/sa/server"
H2_FILE = 1000  # bytes nghttpd serves
TCP_BYTES = 4321  # bytes the client sends to the opaque port; the app echoes them upper-cased
H1_REQUESTS, H2_REQUESTS = 5, 3


@pytest.fixture(scope="module")
def traffic(module_node):
    """One mesh for the module: the traffic runs once, the tests read both proxies' metrics."""
    with cp_mesh_on(module_node) as mesh:
        sel = {"app": "server"}
        mesh.apply("services", service("web", NS, WEB_VIP, 8080, sel),
                   service("h2", NS, H2_VIP, 8081, sel, port_name="http2"),
                   service("cache", NS, CACHE_VIP, 7000, sel, port_name="redis"),
                   service("down", NS, DOWN_VIP, 8090, sel))  # nothing listens on 8090
        mesh.proxy_env = {"REMORA_ACCESS_LOG": "text"}  # the server's proxy: Envoy's format
        server = mesh.add_pod("server", NS, "server", {"app": "server", "version": "v7"})
        mesh.proxy_env = {"REMORA_ACCESS_LOG": "json"}  # the client's proxy: JSON lines
        client = mesh.add_pod("client", NS, "client", {"app": "client", "version": "v1"},
                              hosts={"web.demo": WEB_VIP, "h2.demo": H2_VIP,
                                     "cache.demo": CACHE_VIP, "down.demo": DOWN_VIP})
        mesh.serve(server, 8080, "web")  # answers "web\n"
        www = mesh.tmp / "www"
        www.mkdir()
        (www / "f").write_bytes(b"x" * H2_FILE)
        os.chmod(www, 0o755)
        mesh.apps.append(server.spawn(["nghttpd", "--no-tls", "-d", str(www), "8081"],
                                      uid=APP_UID, gid=APP_UID))
        mesh.apps.append(server.spawn([sys.executable, APPS, "upper", "7000"],
                                      uid=APP_UID, gid=APP_UID))
        mesh.wait_synced(["client.demo", "server.demo"])
        for port in (8081, 7000):
            wait_for(lambda p=port: server.exec(["ss", "-Hltn", f"sport = :{p}"]).stdout.strip(),
                     10, f"port {port}")

        r = mesh.run_app(client, "count", "http://web.demo:8080/", str(H1_REQUESTS))
        assert json.loads(r.stdout)["bodies"] == {"web": H1_REQUESTS}, r.stdout + r.stderr
        for _ in range(H2_REQUESTS):
            r = client.exec(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                             "-w", "%{http_version} %{http_code}", "http://h2.demo:8081/f"],
                            uid=APP_UID, gid=APP_UID, timeout=20)
            assert r.stdout == "2 200", (r.stdout, r.stderr, mesh.logs())
        r = client.exec(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                         "http://down.demo:8090/"], uid=APP_UID, gid=APP_UID, timeout=20)
        assert r.stdout in ("502", "503"), (r.stdout, r.stderr)
        tcp = ("import socket; s = socket.create_connection(('cache.demo', 7000), 5); "
               f"s.sendall(b'a' * {TCP_BYTES}); s.shutdown(socket.SHUT_WR); got = b''\n"
               "while True:\n d = s.recv(65536)\n if not d: break\n got += d\nprint(len(got))")
        r = client.exec([sys.executable, "-c", tcp], uid=APP_UID, gid=APP_UID, timeout=20)
        assert r.stdout.strip() == str(TCP_BYTES), (r.stdout, r.stderr, mesh.logs())

        def scrape(pod) -> dict:
            out = pod.exec(["curl", "-sS", "--max-time", "3", "http://127.0.0.1:15090/metrics"])
            return {f.name: f for f in text_string_to_metric_families(out.stdout)}

        def closed_everywhere() -> dict | None:
            got = {"source": scrape(client), "destination": scrape(server)}
            ok = all(sum(s.value for s in got[r]["istio_tcp_connections_closed"].samples) >= 1
                     for r in got)
            return got if ok else None

        got = wait_for(closed_everywhere, 10, "both proxies to count the TCP close")

        def logged() -> dict | None:  # every exchange and the TCP connection, on both sides
            logs = {"server": text_lines(mesh.proxies["server"].log_text()),
                    "client": json_lines(mesh.proxies["client"].log_text())}
            want = H1_REQUESTS + H2_REQUESTS + 2
            # The TCP connection's line is written when it closes, last: wait for it by name
            # (the failing upstream's 503 is retried, so the count alone says nothing).
            tcp = {"server": "inbound|7000||", "client": f"outbound|7000||cache.{NS}.svc.cluster.local"}
            done = all(len(v) >= want and any(r["upstream_cluster"] == tcp[k] for r in v)
                       for k, v in logs.items())
            return logs if done else None

        got["logs"] = wait_for(logged, 5, "the access log lines")
        yield got


# Envoy's default format, then upstream cluster, the peers' SPIFFE IDs and the trace id.
TEXT_LINE = re.compile(
    r'^\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] '
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<response_code>\d+) '
    r'(?P<response_flags>\S+) (?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) '
    r'(?P<upstream_service_time>\S+) "(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" '
    r'"(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" '
    r'(?P<upstream_cluster>\S+) "(?P<downstream_peer_uri_san>[^"]*)" '
    r'"(?P<upstream_peer_uri_san>[^"]*)" "(?P<trace_id>[^"]*)"$')


def text_lines(log: str) -> list[dict]:
    return [m.groupdict() for m in map(TEXT_LINE.match, log.splitlines()) if m]


def json_lines(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if "start_time" in rec:
                out.append(rec)
    return out


def samples(fams: dict, name: str, **want: str) -> list:
    return [s for s in fams[name].samples if all(s.labels.get(k) == v for k, v in want.items())]


WORKLOADS = {
    "source_workload": "client", "source_workload_namespace": NS, "source_app": "client",
    "source_version": "v1", "source_cluster": "Kubernetes", "source_principal": CLIENT_ID,
    "destination_workload": "server", "destination_workload_namespace": NS,
    "destination_app": "server", "destination_version": "v7", "destination_cluster": "Kubernetes",
    "destination_principal": SERVER_ID, "destination_service_namespace": NS,
}


@pytest.mark.parametrize("reporter", ["source", "destination"])
def test_http1_requests_on_both_reporters(traffic, reporter: str) -> None:
    fams = traffic[reporter]
    (req,) = samples(fams, "istio_requests", destination_service_name="web")
    assert req.value == H1_REQUESTS
    policy = "mutual_tls" if reporter == "destination" else "unknown"
    assert req.labels == {
        **WORKLOADS, "reporter": reporter, "destination_service": f"web.{NS}.svc.cluster.local",
        "destination_service_name": "web", "request_protocol": "http", "response_code": "200",
        "grpc_response_status": "", "response_flags": "-", "connection_security_policy": policy,
    }
    counts = {s.name: s.value for s in samples(fams, "istio_response_bytes",
                                               destination_service_name="web")
              if not s.name.endswith("_bucket")}
    assert counts == {"istio_response_bytes_sum": 4 * H1_REQUESTS,
                      "istio_response_bytes_count": H1_REQUESTS}
    dur = samples(fams, "istio_request_duration_milliseconds", destination_service_name="web")
    assert [s.value for s in dur if s.name.endswith("_count")] == [H1_REQUESTS]
    assert 0 < next(s.value for s in dur if s.name.endswith("_sum")) < H1_REQUESTS * 5000


@pytest.mark.parametrize("reporter", ["source", "destination"])
def test_http2_requests_on_both_reporters(traffic, reporter: str) -> None:
    fams = traffic[reporter]
    (req,) = samples(fams, "istio_requests", destination_service_name="h2")
    assert req.value == H2_REQUESTS
    assert {k: req.labels[k] for k in WORKLOADS} == WORKLOADS
    assert (req.labels["reporter"], req.labels["request_protocol"], req.labels["response_code"]) == (
        reporter, "http", "200")
    sums = {s.name: s.value for s in samples(fams, "istio_response_bytes", destination_service_name="h2")
            if s.name.endswith("_sum")}
    assert sums == {"istio_response_bytes_sum": H2_FILE * H2_REQUESTS}


@pytest.mark.parametrize("reporter", ["source", "destination"])
def test_opaque_tcp_byte_counters_are_exact(traffic, reporter: str) -> None:
    fams = traffic[reporter]
    values = {}
    for name in ("istio_tcp_connections_opened", "istio_tcp_connections_closed",
                 "istio_tcp_sent_bytes", "istio_tcp_received_bytes"):
        (s,) = samples(fams, name, destination_service_name="cache")
        values[name] = s.value
        assert {k: s.labels[k] for k in WORKLOADS} == WORKLOADS
        assert (s.labels["reporter"], s.labels["request_protocol"]) == (reporter, "tcp")
    assert values == {"istio_tcp_connections_opened": 1, "istio_tcp_connections_closed": 1,
                      "istio_tcp_sent_bytes": TCP_BYTES, "istio_tcp_received_bytes": TCP_BYTES}
    # No HTTP series for that connection, and none for the HTTP ones in the TCP family.
    assert samples(fams, "istio_requests", destination_service_name="cache") == []
    assert samples(fams, "istio_tcp_connections_opened", destination_service_name="web") == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_use_only_metrics_and_labels_the_proxies_export(traffic, path) -> None:
    labels: dict[str, set[str]] = {}  # sample name -> every label it carries, both reporters
    for fams in (traffic["source"], traffic["destination"]):
        for fam in fams.values():
            for s in fam.samples:
                labels.setdefault(s.name, set()).update(s.labels)
    for expr in expressions(load(path)):
        r = refs(expr)
        used: set[str] = set()
        for metric, matchers in r.metrics:
            assert metric in labels, f"{path.name}: {metric} is not exported ({expr})"
            assert matchers <= labels[metric], (path.name, metric, matchers - labels[metric])
            used |= labels[metric]
        assert r.grouping <= used, (path.name, expr, r.grouping - used)


def test_a_failed_upstream_connection_carries_envoys_response_flag(traffic) -> None:
    """The server's proxy cannot reach the app: it answers itself with flag UF (upstream
    connection failure); the client's proxy retries that 503 under Istio's default retry
    policy (retriable-status-codes 503) and, the retries exhausted, relays it with URX."""
    (server_side,) = samples(traffic["destination"], "istio_requests", destination_service_name="down")
    assert (server_side.labels["response_code"], server_side.labels["response_flags"]) == ("503", "UF")
    (client_side,) = samples(traffic["source"], "istio_requests", destination_service_name="down")
    assert (client_side.labels["response_code"], client_side.labels["response_flags"]) == ("503", "URX")


def test_access_log_lines_for_http1_http2_and_tcp_in_both_formats(traffic) -> None:
    server, client = traffic["logs"]["server"], traffic["logs"]["client"]
    # The server's proxy, Envoy's text format (values as text; "-" where none).
    h1 = [r for r in server if r["upstream_cluster"] == "inbound|8080||"]
    assert len(h1) == H1_REQUESTS
    assert {(r["method"], r["path"], r["protocol"], r["response_code"], r["response_flags"],
             r["bytes_sent"], r["downstream_peer_uri_san"]) for r in h1} == {
        ("GET", "/", "HTTP/1.1", "200", "-", "4", CLIENT_ID)}
    assert all(r["upstream_host"].endswith(":8080") and len(r["request_id"]) == 36 for r in h1)
    h2 = [r for r in server if r["upstream_cluster"] == "inbound|8081||"]
    assert [(r["protocol"], r["path"], r["bytes_sent"], r["authority"]) for r in h2] == [
        ("HTTP/2", "/f", str(H2_FILE), "h2.demo:8081")] * H2_REQUESTS
    (tcp,) = [r for r in server if r["upstream_cluster"] == "inbound|7000||"]
    assert (tcp["method"], tcp["protocol"], tcp["response_code"], tcp["bytes_received"],
            tcp["bytes_sent"], tcp["downstream_peer_uri_san"]) == (
        "-", "-", "0", str(TCP_BYTES), str(TCP_BYTES), CLIENT_ID)
    # The client's proxy, JSON lines (numbers as numbers, null where none).
    web = f"outbound|8080||web.{NS}.svc.cluster.local"
    h1c = [r for r in client if r["upstream_cluster"] == web]
    assert len(h1c) == H1_REQUESTS
    assert {(r["method"], r["protocol"], r["response_code"], r["bytes_sent"], r["authority"],
             r["upstream_peer_uri_san"], r["downstream_peer_uri_san"]) for r in h1c} == {
        ("GET", "HTTP/1.1", 200, 4, "web.demo:8080", SERVER_ID, None)}
    # One request id per request, the same on both sides.
    assert {r["request_id"] for r in h1c} == {r["request_id"] for r in h1}
    h2c = [r for r in client if r["upstream_cluster"] == f"outbound|8081||h2.{NS}.svc.cluster.local"]
    assert [(r["protocol"], r["response_code"], r["bytes_sent"], r["authority"]) for r in h2c] == [
        ("HTTP/2", 200, H2_FILE, "h2.demo:8081")] * H2_REQUESTS  # :authority, not among the headers
    (tcpc,) = [r for r in client if r["upstream_cluster"] == f"outbound|7000||cache.{NS}.svc.cluster.local"]
    assert (tcpc["method"], tcpc["bytes_received"], tcpc["bytes_sent"], tcpc["upstream_peer_uri_san"]) == (
        None, TCP_BYTES, TCP_BYTES, SERVER_ID)
    assert all(isinstance(r["duration"], int) and r["duration"] >= 0 for r in client)
