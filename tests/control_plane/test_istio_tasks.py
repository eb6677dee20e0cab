"""Istio's traffic-management tasks, their YAML applied unchanged: the snapshot a proxy gets and
the decisions the proxy's router takes from it are the documented outcome.

Here the control plane's output is checked field by field and through ``Router.decide``; the
same YAML with real traffic through both relays is tests/sidecar/test_traffic_relay.py.
"""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

from control_plane.api import model
from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.resources import key_of
from control_plane.sources.files import read_manifests
from sidecar.routing import RequestInfo, Router
from sidecar.traffic import fault

TASKS = Path(__file__).parent / "data" / "istio_tasks"


def snapshot(*files: str, pod: tuple[str, str] = ("default", "productpage-v1")) -> tuple[ProxyConfig, list[str]]:
    applied = {key_of(o): o for f in files for o in read_manifests(TASKS / f)}  # kubectl apply: last wins
    reg = Registry.from_objects(applied.values())
    assert reg.errors == []
    b = SnapshotBuilder(reg, "cluster.local", "ROOTS\n")
    cfg = b.snapshot_for(ProxyKey(*pod)).config
    # What the proxy receives passes its strict decoder unchanged.
    decoded = ProxyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert decoded == cfg
    return cfg, list(b.notes)


def port(cfg: ProxyConfig, service: str, number: int) -> model.OutboundPort:
    return next(o for o in cfg.outbound if o.service.startswith(f"{service}.") and o.port == number)


def go(router: Router, cfg: ProxyConfig, service: str, headers: tuple = (), path: str = "/") -> str:
    d = router.decide(port(cfg, service, 9080), RequestInfo("GET", path, f"{service}:9080", headers=headers,
                                                            port=9080))
    assert d.status == 0, d
    return d.cluster.name.split("|", 2)[-1]


BOOKINFO = ("bookinfo.yaml", "destination-rule-all.yaml")


def test_request_routing_all_v1() -> None:
    cfg, notes = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml")
    assert notes == []
    router = Router(cfg)
    for svc in ("productpage", "reviews", "ratings", "details"):
        assert {go(router, cfg, svc) for _ in range(20)} == {"v1"}
    clusters = {c.name: c for c in cfg.clusters}
    assert [e.address for e in clusters["reviews.default.svc.cluster.local|9080|v1"].endpoints] == ["198.18.1.21"]
    assert clusters["ratings.default.svc.cluster.local|9080|v2-mysql"].endpoints == ()


def test_request_routing_by_end_user_header() -> None:
    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml")
    router = Router(cfg)
    assert go(router, cfg, "reviews", (("end-user", "jason"),)) == "v2"
    assert go(router, cfg, "reviews", (("end-user", "Jason"),)) == "v1"  # exact is case-sensitive
    assert go(router, cfg, "reviews") == "v1"


def test_fault_injection_delay_for_jason() -> None:
    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-ratings-test-delay.yaml")
    router = Router(cfg)
    ratings = port(cfg, "ratings", 9080)
    d = router.decide(ratings, RequestInfo("GET", "/ratings/0", headers=(("end-user", "jason"),), port=9080))
    assert d.http_route.fault == model.Fault(delay=model.FaultDelay(7.0, 100.0))
    assert fault.decide(d.http_route.fault).delay == 7.0
    other = router.decide(ratings, RequestInfo("GET", "/ratings/0", port=9080))
    assert other.http_route.fault is None and other.cluster.name.endswith("|v1")


def test_fault_injection_abort_for_jason() -> None:
    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-ratings-test-abort.yaml")
    d = Router(cfg).decide(port(cfg, "ratings", 9080),
                           RequestInfo("GET", "/", headers=(("end-user", "jason"),), port=9080))
    decision = fault.decide(d.http_route.fault)
    assert (decision.http_status, decision.flags) == (500, ("FI",))


def test_traffic_shifting_50_50_then_all_v3() -> None:
    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-50-v3.yaml")
    router = Router(cfg, rand=random.Random(1))
    counts = collections.Counter(go(router, cfg, "reviews") for _ in range(1000))
    assert set(counts) == {"v1", "v3"} and 430 < counts["v1"] < 570
    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-v3.yaml")
    assert {go(Router(cfg), cfg, "reviews") for _ in range(20)} == {"v3"}


def test_request_timeouts() -> None:
    cfg, _ = snapshot(*BOOKINFO, "request-timeouts.yaml")
    router = Router(cfg)
    d = router.decide(port(cfg, "reviews", 9080), RequestInfo("GET", "/reviews/0", port=9080))
    assert (d.timeout, d.cluster.name) == (0.5, "reviews.default.svc.cluster.local|9080|v2")
    r = router.decide(port(cfg, "ratings", 9080), RequestInfo("GET", "/ratings/0", port=9080))
    assert (r.timeout, r.http_route.fault.delay) == (None, model.FaultDelay(2.0, 100.0))


def test_circuit_breaking_policy_reaches_every_httpbin_cluster() -> None:
    cfg, notes = snapshot("httpbin.yaml", "circuit-breaking.yaml", pod=("default", "fortio"))
    assert notes == []
    (c,) = [c for c in cfg.clusters if c.service.startswith("httpbin.")]
    assert c.policy.connection_pool == model.ConnectionPool(
        max_connections=1, http1_max_pending_requests=1, max_requests_per_connection=1)
    assert c.policy.outlier == model.OutlierDetection(
        consecutive_5xx=1, interval=1.0, base_ejection_time=180.0, max_ejection_percent=100.0)
    assert c.policy.load_balancer == model.LoadBalancer()  # unspecified: LEAST_REQUEST, as Istio


def test_mirroring_all_to_v1_copied_to_v2() -> None:
    cfg, _ = snapshot("httpbin.yaml", "mirroring.yaml", pod=("default", "fortio"))
    httpbin = port(cfg, "httpbin", 8000)
    (route,) = httpbin.routes
    assert route.mirror == "httpbin.default.svc.cluster.local|8000|v2" and route.mirror_percent == 100.0
    d = Router(cfg).decide(httpbin, RequestInfo("GET", "/headers", port=8000))
    assert (d.cluster.name, d.endpoint.address, d.endpoint.port) == (
        "httpbin.default.svc.cluster.local|8000|v1", "198.18.2.11", 80)


def test_tcp_traffic_shifting_is_gateway_only_and_says_so() -> None:
    ns = ("istio-io-tcp-traffic-shifting", "curl")
    cfg, notes = snapshot("tcp-echo.yaml", "tcp-echo-all-v1.yaml", pod=ns)
    prefix = "istio-io-tcp-traffic-shifting"
    assert f"Gateway/{prefix}/tcp-echo-gateway: Gateway is not implemented (no effect)" in notes
    assert (f"VirtualService/{prefix}/tcp-echo: bound only to gateways, so no sidecar applies it (no effect)"
            in notes)
    # The subsets still become clusters, on both ports.
    names = {c.name for c in cfg.clusters}
    assert {f"tcp-echo.{prefix}.svc.cluster.local|{p}|{s}" for p in (9000, 9001) for s in ("v1", "v2")} <= names
    assert port(cfg, "tcp-echo", 9000).tcp_routes == ()


def test_tcp_traffic_shifting_for_the_mesh_gateway() -> None:
    """The task's 80/20 route bound to the sidecars ("mesh") instead of the ingress gateway."""
    objs = read_manifests(TASKS / "tcp-echo-20-v2.yaml")
    vs = objs[0]
    vs["spec"]["gateways"] = ["mesh"]
    vs["spec"]["hosts"] = ["tcp-echo"]
    vs["spec"]["tcp"][0]["match"][0]["port"] = 9000
    reg = Registry.from_objects([*read_manifests(TASKS / "tcp-echo.yaml"),
                                 *read_manifests(TASKS / "tcp-echo-all-v1.yaml")[:2], vs])
    cfg = SnapshotBuilder(reg, "cluster.local", "").snapshot_for(
        ProxyKey("istio-io-tcp-traffic-shifting", "curl")).config
    p9000 = next(o for o in cfg.outbound if o.port == 9000)
    p9001 = next(o for o in cfg.outbound if o.port == 9001)
    (route,) = p9000.tcp_routes
    assert [(d.cluster.rsplit("|", 1)[-1], d.weight) for d in route.destinations] == [("v1", 80), ("v2", 20)]
    assert p9001.tcp_routes == ()  # the match names port 9000 only
    router = Router(cfg, rand=random.Random(3))
    counts = collections.Counter(router.tcp_cluster(p9000).rsplit("|", 1)[-1] for _ in range(1000))
    assert 150 < counts["v2"] < 250
    assert router.tcp_cluster(p9001).endswith("|9001")


def test_golden_bookinfo_snapshot() -> None:
    """The productpage proxy's snapshot with the request routing and fault injection
    resources: the whole wire shape of routes and policies, reviewed as one file."""
    import os

    cfg, _ = snapshot(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml",
                      "virtual-service-ratings-test-abort.yaml")
    got = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
    path = Path(__file__).parent.parent / "golden" / "control_plane" / "snapshot-bookinfo-productpage.json"
    if os.environ.get("REMORA_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert got == path.read_text(), f"snapshot differs from {path}; REMORA_UPDATE_GOLDEN=1 regenerates"
