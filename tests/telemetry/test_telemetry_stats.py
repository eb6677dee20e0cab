"""Istio's standard metrics as the proxy renders them, parsed by prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from control_plane.api.model import Cluster, Endpoint, ProxyConfig, WorkloadMeta
from sidecar.labels import LABELS, Labeler
from sidecar.stats import BYTES_BUCKETS, DURATION_BUCKETS_MS, Stats

WEB = WorkloadMeta("web", "demo", "web", "v1", "web")
REVIEWS = WorkloadMeta("reviews-v2", "demo", "reviews", "v2", "reviews")
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"
REVIEWS_ID = "spiffe://cluster.local/ns/demo/sa/reviews"
HOST = "reviews.demo.svc.cluster.local"
REVIEWS_EP = Endpoint("198.18.0.22", 9080, REVIEWS_ID, workload=REVIEWS)


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def labeler(own: WorkloadMeta, identity: str) -> Labeler:
    cfg = ProxyConfig(
        clusters=(Cluster(f"{HOST}|9080", HOST, 9080, "http", (REVIEWS_EP,)),),
        workload=own, peers={"198.18.0.11": WEB, "198.18.0.22": REVIEWS},
    )
    lab = Labeler()
    lab.update(cfg, identity)
    return lab


def test_request_metrics_names_types_labels_and_buckets() -> None:
    stats = Stats()
    key = labeler(WEB, WEB_ID).outbound(HOST, REVIEWS_EP, "http")
    stats.exchange_done(key, 200, "", "-", 0, 1500, 0.0042)
    stats.exchange_done(key, 200, "", "-", 20, 10, 0.7)
    stats.exchange_done(key, 503, "", "UF", 0, 0, 0.0001)
    fams = families(stats.render_prometheus())
    assert fams["istio_requests"].type == "counter"
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        assert fams[name].type == "histogram"
    ok = [s for s in fams["istio_requests"].samples if s.labels["response_code"] == "200"]
    assert len(ok) == 1 and ok[0].value == 2
    labels = ok[0].labels
    assert set(labels) == {*LABELS, "response_code", "grpc_response_status", "response_flags"}
    assert labels == {
        "reporter": "source",
        "source_workload": "web", "source_workload_namespace": "demo", "source_principal": WEB_ID,
        "source_app": "web", "source_version": "v1", "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2", "destination_workload_namespace": "demo",
        "destination_principal": REVIEWS_ID, "destination_app": "reviews",
        "destination_version": "v2", "destination_service": HOST,
        "destination_service_name": "reviews", "destination_service_namespace": "demo",
        "destination_cluster": "Kubernetes", "request_protocol": "http",
        "connection_security_policy": "unknown",
        "response_code": "200", "grpc_response_status": "", "response_flags": "-",
    }
    failed = [s for s in fams["istio_requests"].samples if s.labels["response_code"] == "503"]
    assert failed[0].labels["response_flags"] == "UF"

    def buckets(name: str, code: str) -> dict[float, float]:
        return {float(s.labels["le"]): s.value for s in fams[name].samples
                if s.name.endswith("_bucket") and s.labels["response_code"] == code}

    dur = buckets("istio_request_duration_milliseconds", "200")
    assert sorted(dur) == [*map(float, DURATION_BUCKETS_MS), float("inf")]
    assert (dur[1.0], dur[5.0], dur[500.0], dur[1000.0], dur[float("inf")]) == (0, 1, 1, 2, 2)
    resp = buckets("istio_response_bytes", "200")
    assert sorted(resp) == [*map(float, BYTES_BUCKETS), float("inf")]
    assert (resp[1.0], resp[10.0], resp[1000.0], resp[10000.0]) == (0, 1, 1, 2)
    sums = {s.name: s.value for s in fams["istio_request_bytes"].samples
            if s.labels["response_code"] == "200" and not s.name.endswith("_bucket")}
    assert sums == {"istio_request_bytes_sum": 20, "istio_request_bytes_count": 2}
    dur_sum = [s.value for s in fams["istio_request_duration_milliseconds"].samples
               if s.name.endswith("_sum") and s.labels["response_code"] == "200"]
    assert abs(dur_sum[0] - 704.2) < 1e-6


def test_inbound_labels_name_the_client_from_the_peers_table() -> None:
    lab = labeler(REVIEWS, REVIEWS_ID)
    stats = Stats()
    stats.exchange_done(lab.inbound("198.18.0.11", ("198.18.0.22", 9080), WEB_ID, "grpc"),
                        200, "0", "-", 5, 7, 0.001)
    stats.exchange_done(lab.inbound("::ffff:198.18.0.99", ("198.18.0.22", 7000), None, "http"),
                        404, "", "-", 0, 0, 0.001)
    samples = {s.labels["response_code"]: s.labels
               for s in families(stats.render_prometheus())["istio_requests"].samples}
    mtls, plain = samples["200"], samples["404"]
    assert (mtls["reporter"], mtls["source_workload"], mtls["source_principal"]) == (
        "destination", "web", WEB_ID)
    assert (mtls["destination_workload"], mtls["destination_principal"],
            mtls["destination_service"]) == ("reviews-v2", REVIEWS_ID, HOST)
    assert (mtls["connection_security_policy"], mtls["request_protocol"],
            mtls["grpc_response_status"]) == ("mutual_tls", "grpc", "0")
    # An unknown client and a port no service names: "unknown", never a value from the request.
    assert (plain["source_workload"], plain["source_principal"], plain["destination_service"],
            plain["connection_security_policy"]) == ("unknown", "unknown", "unknown", "none")


def test_tcp_counters_and_label_key_reuse() -> None:
    lab = labeler(WEB, WEB_ID)
    stats = Stats()
    key = lab.outbound(HOST, REVIEWS_EP, "tcp")
    assert lab.outbound(HOST, REVIEWS_EP, "tcp") is key  # computed once, then reused
    first = stats.tcp_open(key)
    first[2] += 300  # what a relay adds: sent (to the downstream) ...
    first[3] += 120  # ... and received (from it)
    stats.tcp_close(key, first)
    stats.tcp_close(key, first)  # a second close of one connection is not counted
    second = stats.tcp_open(key)
    second[2] += 5  # an open connection's bytes show at once

    def values() -> dict[str, float]:
        fams = families(stats.render_prometheus())
        return {name: fams[name].samples[0].value for name in (
            "istio_tcp_connections_opened", "istio_tcp_connections_closed",
            "istio_tcp_sent_bytes", "istio_tcp_received_bytes")}

    assert values() == {"istio_tcp_connections_opened": 2, "istio_tcp_connections_closed": 1,
                        "istio_tcp_sent_bytes": 305, "istio_tcp_received_bytes": 120}
    second[2] += 10
    stats.tcp_close(key, second)
    assert values()["istio_tcp_sent_bytes"] == 315
    fams = families(stats.render_prometheus())
    for name in values():
        assert fams[name].type == "counter"
        assert fams[name].samples[0].labels["request_protocol"] == "tcp"


def test_legacy_request_done_still_renders_remora_series() -> None:
    stats = Stats()
    stats.request_done("outbound", HOST, 200, 0.003, REVIEWS_ID)
    fams = families(stats.render_prometheus())
    (s,) = fams["remora_requests"].samples
    assert s.value == 1 and s.labels["peer_identity"] == REVIEWS_ID
    assert fams["istio_requests"].samples == []
