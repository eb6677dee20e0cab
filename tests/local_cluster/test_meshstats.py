"""Per-edge numbers from the proxies' Prometheus text: parse, subtract, quantiles, split."""

from __future__ import annotations

import pytest

from local_cluster import meshstats

BEFORE = """# TYPE remora_requests_total counter
remora_requests_total{direction="outbound",service="reviews.demo.svc.cluster.local",response_code="200",peer_identity="spiffe://cluster.local/ns/demo/sa/reviews"} 10
"""
AFTER = """# TYPE remora_requests_total counter
remora_requests_total{direction="outbound",service="reviews.demo.svc.cluster.local",response_code="200",peer_identity="spiffe://cluster.local/ns/demo/sa/reviews"} 108
remora_requests_total{direction="outbound",service="reviews.demo.svc.cluster.local",response_code="503",peer_identity=""} 2
# TYPE remora_request_duration_seconds histogram
remora_request_duration_seconds_bucket{direction="outbound",service="reviews.demo.svc.cluster.local",le="0.001"} 0
remora_request_duration_seconds_bucket{direction="outbound",service="reviews.demo.svc.cluster.local",le="0.005"} 50
remora_request_duration_seconds_bucket{direction="outbound",service="reviews.demo.svc.cluster.local",le="0.01"} 99
remora_request_duration_seconds_bucket{direction="outbound",service="reviews.demo.svc.cluster.local",le="+Inf"} 100
remora_request_duration_seconds_count{direction="outbound",service="reviews.demo.svc.cluster.local"} 100
"""


def test_edges_from_two_scrapes() -> None:
    d = meshstats.delta(meshstats.parse(AFTER), meshstats.parse(BEFORE))
    (edge,) = meshstats.edges({"catalog-0": ("catalog", d)})
    assert (edge.workload, edge.direction) == ("catalog", "outbound")
    assert edge.requests == 100 and edge.ok == 98
    assert edge.success_rate == pytest.approx(0.98)
    assert edge.peers == {"spiffe://cluster.local/ns/demo/sa/reviews"}
    assert edge.quantile(0.5) == pytest.approx(0.005)
    assert 0.005 < edge.quantile(0.99) <= 0.01


def test_a_restarted_proxy_counts_from_zero() -> None:
    before = meshstats.parse(AFTER)
    after = meshstats.parse(BEFORE)
    assert set(meshstats.delta(after, before).values()) == {10.0}


def test_quantile_edge_cases() -> None:
    assert meshstats.quantile(0.5, []) is None
    assert meshstats.quantile(0.5, [(0.1, 0), (float("inf"), 0)]) is None
    assert meshstats.quantile(0.99, [(0.1, 10), (float("inf"), 20)]) == 0.1


def test_split_counts_inbound_requests_per_workload() -> None:
    def inbound(n: int) -> dict:
        return meshstats.parse(
            f'remora_requests_total{{direction="inbound",service="reviews",response_code="200",'
            f'peer_identity="spiffe://cluster.local/ns/demo/sa/catalog"}} {n}\n')

    edges = meshstats.edges({"r1": ("reviews-v1", inbound(80)), "r1b": ("reviews-v1", inbound(0)),
                             "r2": ("reviews-v2", inbound(20))})
    assert meshstats.split(edges, ["reviews-v1", "reviews-v2"]) == {
        "reviews-v1": pytest.approx(0.8), "reviews-v2": pytest.approx(0.2)}
    assert meshstats.split([], ["a"]) == {"a": 0.0}
