"""What the builder makes of Istio resources: effective DestinationRule policies, ServiceEntry
clusters, Sidecar scoping, routes and tcp routes, and the reports for what is not implemented."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.api import model
from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry


def svc(name: str, ns: str, ip: str, *ports: tuple[str, int]) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": {"app": name},
                     "ports": [{"name": n, "port": p} for n, p in ports]}}


def pod(name: str, ns: str, ip: str, **labels: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels,
                                        "annotations": {"remora.dev/status": "{}"}},
            "spec": {"serviceAccountName": labels.get("app", "default")}, "status": {"podIP": ip}}


def res(kind: str, name: str, ns: str, **spec: Any) -> dict[str, Any]:
    group = "security.istio.io" if kind == "PeerAuthentication" else "networking.istio.io"
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


BASE = [
    svc("web", "app", "198.19.0.20", ("http", 80), ("http-admin", 81)),
    svc("db", "data", "198.19.0.30", ("tcp", 5432)),
    pod("web-1", "app", "198.18.0.21", app="web", version="v1"),
    pod("web-2", "app", "198.18.0.22", app="web", version="v2"),
    pod("client", "app", "198.18.0.40", app="client"),
    pod("db-0", "data", "198.18.0.31", app="db"),
]


def build(*objs: dict[str, Any], key: tuple[str, str] = ("app", "client"), root: str = "remora-system",
          ) -> tuple[ProxyConfig, tuple[str, ...], Registry]:
    reg = Registry.from_objects([*BASE, *objs])
    assert reg.errors == []
    b = SnapshotBuilder(reg, "cluster.local", "", root_namespace=root)
    cfg = b.snapshot_for(ProxyKey(*key)).config
    ProxyConfig.from_dict(cfg.to_dict())
    return cfg, b.notes, reg


def clusters(cfg: ProxyConfig) -> dict[str, model.Cluster]:
    return {c.name: c for c in cfg.clusters}


WEB = "web.app.svc.cluster.local"


def test_policy_overrides_rule_then_port_then_subset_then_subset_port() -> None:
    rule = res("DestinationRule", "web", "app", host="web", trafficPolicy={
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "connectionPool": {"tcp": {"maxConnections": 10}},
        "outlierDetection": {"consecutive5xxErrors": 7},
        "portLevelSettings": [{"port": {"number": 81}, "loadBalancer": {"simple": "RANDOM"}}],
    }, subsets=[
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {
            "connectionPool": {"http": {"http2MaxRequests": 3}},
            "portLevelSettings": [{"port": {"number": 81}, "loadBalancer": {"simple": "PASSTHROUGH"}}]}},
    ])
    c = clusters(build(rule)[0])
    lb = {n: c[n].policy.load_balancer.simple for n in c if n.startswith(WEB)}
    assert lb == {f"{WEB}|80": "ROUND_ROBIN", f"{WEB}|81": "RANDOM", f"{WEB}|80|v1": "ROUND_ROBIN",
                  f"{WEB}|81|v1": "RANDOM", f"{WEB}|80|v2": "ROUND_ROBIN", f"{WEB}|81|v2": "PASSTHROUGH"}
    # A part set at a level replaces the whole part from the level before.
    assert c[f"{WEB}|80|v1"].policy.connection_pool == model.ConnectionPool(max_connections=10)
    assert c[f"{WEB}|80|v2"].policy.connection_pool == model.ConnectionPool(http2_max_requests=3)
    assert c[f"{WEB}|80|v2"].policy.outlier.consecutive_5xx == 7
    assert [e.address for e in c[f"{WEB}|80|v2"].endpoints] == ["198.18.0.22"]


def test_tls_disable_makes_the_hop_plaintext_and_connect_timeout_is_the_clusters() -> None:
    rule = res("DestinationRule", "web", "app", host="web", trafficPolicy={
        "tls": {"mode": "DISABLE"}, "connectionPool": {"tcp": {"connectTimeout": "250ms"}}})
    c = clusters(build(rule)[0])[f"{WEB}|80"]
    assert [e.identity for e in c.endpoints] == [None, None] and c.connect_timeout == 0.25
    mutual = res("DestinationRule", "web", "app", host="web", trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}})
    assert clusters(build(mutual)[0])[f"{WEB}|80"].endpoints[0].identity == "spiffe://cluster.local/ns/app/sa/web"


def test_consistent_hash_and_defaults() -> None:
    rule = res("DestinationRule", "web", "app", host="web", trafficPolicy={"loadBalancer": {"consistentHash": {
        "httpHeaderName": "X-User", "minimumRingSize": 16}}})
    c = clusters(build(rule)[0])
    assert c[f"{WEB}|80"].policy.load_balancer.consistent_hash == model.ConsistentHash(
        header="x-user", minimum_ring_size=16)
    assert clusters(build()[0])[f"{WEB}|80"].policy == model.TrafficPolicy()


def test_http_route_fields_reach_the_snapshot() -> None:
    v = res("VirtualService", "web", "app", hosts=["web"], http=[
        {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new"}},
        {"match": [{"headers": {"x-teapot": {}}}], "directResponse": {"status": 418}},
        {"route": [{"destination": {"host": "web"}}], "retries": {"attempts": 0}},
    ])
    cfg, notes, _ = build(v)
    p80 = next(o for o in cfg.outbound if o.port == 80)
    assert p80.routed and [r.name for r in p80.routes] == ["web.0", "web.1", "web.2"]
    assert p80.routes[0].redirect == model.Redirect(uri="/new") and p80.routes[0].destinations == ()
    assert p80.routes[1].matches[0].headers == {"x-teapot": model.StringMatch()}
    assert p80.routes[2].retries == model.RetryPolicy(0, None, model.DEFAULT_RETRY_ON, (503,))
    assert notes == ()


def test_retry_on_numbers_become_status_codes() -> None:
    v = res("VirtualService", "web", "app", hosts=["web"], http=[
        {"route": [{"destination": {"host": "web"}}],
         "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,429,503"}}])
    (route,) = next(o for o in build(v)[0].outbound if o.port == 80).routes
    assert route.retries == model.RetryPolicy(
        3, 2.0, ("gateway-error", "connect-failure", "retriable-status-codes"), (429, 503))


def test_undefined_destination_becomes_a_503_route_and_is_reported() -> None:
    v = res("VirtualService", "web", "app", hosts=["web"], http=[
        {"route": [{"destination": {"host": "web", "subset": "v9"}}]}])
    cfg, notes, _ = build(v)
    (route,) = next(o for o in cfg.outbound if o.port == 80).routes
    assert route.direct_response == model.DirectResponse(503, "no healthy upstream")
    assert any("subset 'v9'" in n for n in notes)


def test_gateway_only_matches_are_dropped_for_sidecars() -> None:
    v = res("VirtualService", "web", "app", hosts=["web"], http=[
        {"match": [{"gateways": ["ingress"], "uri": {"prefix": "/"}}], "route": [{"destination": {"host": "web"}}]},
        {"match": [{"gateways": ["ingress"]}, {"uri": {"prefix": "/b"}}], "route": [{"destination": {"host": "web"}}]},
    ])
    cfg, notes, _ = build(v)
    routes = next(o for o in cfg.outbound if o.port == 80).routes
    assert [r.name for r in routes] == ["web.1"] and len(routes[0].matches) == 1
    assert any("Gateway is not implemented" in n for n in notes)


def test_tcp_routes_for_a_tcp_port() -> None:
    v = res("VirtualService", "db", "data", hosts=["db"], tcp=[
        {"match": [{"destinationSubnets": ["198.18.0.0/16"]}], "route": [{"destination": {"host": "db"}}]},
        {"route": [{"destination": {"host": "db"}}]}])
    cfg, notes, _ = build(v)
    p = next(o for o in cfg.outbound if o.port == 5432)
    # The first route's only match cannot be evaluated: left out, not widened to match all.
    assert [(t.name, d.cluster) for t in p.tcp_routes for d in t.destinations] == [
        ("db.tcp.1", "db.data.svc.cluster.local|5432")]
    assert ("VirtualService/data/db: spec.tcp[0].match[0].destinationSubnets is not implemented yet; "
            "this match is left out") in notes


def test_service_entry_static_dns_and_none() -> None:
    static = res("ServiceEntry", "ext-static", "app", hosts=["api.example.com"], addresses=["198.19.9.1"],
                 ports=[{"number": 443, "name": "tls", "protocol": "TLS"}], location="MESH_EXTERNAL",
                 resolution="STATIC", endpoints=[{"address": "198.18.9.1"}, {"address": "198.18.9.2", "weight": 3}])
    dns = res("ServiceEntry", "ext-dns", "app", hosts=["db.example.com"], addresses=["198.19.9.2"],
              ports=[{"number": 5432, "name": "tcp", "protocol": "TCP", "targetPort": 6432}], resolution="DNS")
    none = res("ServiceEntry", "ext-none", "app", hosts=["*.cdn.example.com"],
               ports=[{"number": 80, "name": "http", "protocol": "HTTP"}], resolution="NONE")
    internal = res("ServiceEntry", "vm", "app", hosts=["vm.internal"], addresses=["198.19.9.3"],
                   ports=[{"number": 8080, "name": "http", "protocol": "HTTP"}], location="MESH_INTERNAL",
                   resolution="STATIC", endpoints=[{"address": "198.18.9.9", "serviceAccount": "vm-sa",
                                                    "labels": {"version": "v1"}}])
    vm_rule = res("DestinationRule", "vm", "app", host="vm.internal", subsets=[{"name": "v1",
                                                                                "labels": {"version": "v1"}}])
    cfg, notes, _ = build(static, dns, none, internal, vm_rule)
    c = clusters(cfg)
    api = c["api.example.com|443"]
    assert [(e.address, e.port, e.weight, e.identity) for e in api.endpoints] == [
        ("198.18.9.1", 443, 1, None), ("198.18.9.2", 443, 3, None)]
    assert api.protocol == model.TLS
    assert c["db.example.com|5432"].dns == (model.DnsTarget("db.example.com", 6432),)
    assert c["*.cdn.example.com|80"].policy.load_balancer.simple == model.LB_PASSTHROUGH
    assert c["vm.internal|8080|v1"].endpoints[0].identity == "spiffe://cluster.local/ns/app/sa/vm-sa"
    ports = {(o.service, o.port): o.addresses for o in cfg.outbound}
    assert ports[("api.example.com", 443)] == ("198.19.9.1",)
    assert ("*.cdn.example.com", 80) not in ports  # no address to capture: reported
    assert any("ServiceEntry/app/ext-none: spec.addresses is empty" in n for n in notes)


def test_virtual_service_routes_a_service_entry_host() -> None:
    se = res("ServiceEntry", "ext", "app", hosts=["api.example.com"], addresses=["198.19.9.1"],
             ports=[{"number": 80, "name": "http", "protocol": "HTTP"}], resolution="STATIC",
             endpoints=[{"address": "198.18.9.1"}])
    v = res("VirtualService", "ext", "app", hosts=["api.example.com"], http=[
        {"timeout": "3s", "route": [{"destination": {"host": "api.example.com"}}]}])
    cfg, _, _ = build(se, v)
    (route,) = next(o for o in cfg.outbound if o.service == "api.example.com").routes
    assert (route.timeout, route.destinations[0].cluster) == (3.0, "api.example.com|80")


@pytest.mark.parametrize(("hosts", "selector", "seen"), [
    (["./*"], None, {WEB}),
    (["data/*"], None, {"db.data.svc.cluster.local"}),
    (["*/db.data.svc.cluster.local", "./web.app.svc.cluster.local"], None, {WEB, "db.data.svc.cluster.local"}),
    (["~/*"], None, set()),
    (["./*"], {"app": "other"}, {WEB, "db.data.svc.cluster.local"}),  # selects nobody: no scope
])
def test_sidecar_egress_hosts_narrow_what_a_proxy_gets(hosts: list[str], selector: dict | None,
                                                       seen: set[str]) -> None:
    spec: dict[str, Any] = {"egress": [{"hosts": hosts}]}
    if selector:
        spec["workloadSelector"] = {"labels": selector}
    cfg, _, _ = build(res("Sidecar", "default", "app", **spec))
    assert {o.service for o in cfg.outbound} == seen
    assert {c.service for c in cfg.clusters} == seen


def test_sidecar_precedence_workload_then_namespace_then_root() -> None:
    root = res("Sidecar", "default", "remora-system", egress=[{"hosts": ["data/*"]}])
    ns = res("Sidecar", "default", "app", egress=[{"hosts": ["./*"]}])
    mine = res("Sidecar", "client", "app", workloadSelector={"labels": {"app": "client"}},
               egress=[{"hosts": ["~/*"]}])
    assert build(root, ns, mine)[0].outbound == ()
    assert {o.service for o in build(root, ns)[0].outbound} == {WEB}
    assert {o.service for o in build(root)[0].outbound} == {"db.data.svc.cluster.local"}
    assert {o.service for o in build(root, key=("data", "db-0"))[0].outbound} == {"db.data.svc.cluster.local"}


def test_mesh_wide_looking_resources_in_istio_system_are_reported() -> None:
    pa = res("PeerAuthentication", "default", "istio-system", mtls={"mode": "STRICT"})
    sc = res("Sidecar", "default", "istio-system", egress=[{"hosts": ["./*"]}])
    cfg, notes, _ = build(pa, sc)
    assert ("PeerAuthentication/istio-system/default: istio-system is not the root namespace (remora-system); "
            "this resource is not mesh-wide, it applies to istio-system only") in notes
    assert any(n.startswith("Sidecar/istio-system/default: istio-system is not the root namespace") for n in notes)
    assert cfg.inbound.mtls_mode == model.PERMISSIVE  # not applied mesh-wide
    _, notes, _ = build(pa, sc, root="istio-system")
    assert not any("root namespace" in n for n in notes)


@pytest.mark.parametrize("kind", ["Gateway", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup",
                                  "RequestAuthentication", "Telemetry", "WasmPlugin"])
def test_kinds_not_implemented_are_reported_by_name(kind: str) -> None:
    _, notes, _ = build(res(kind, "thing", "app"))
    assert f"{kind}/app/thing: {kind} is not implemented (no effect)" in notes


def test_fields_not_implemented_are_reported() -> None:
    v = res("VirtualService", "web", "app", hosts=["web"], exportTo=["."], tls=[{}], http=[
        {"route": [{"destination": {"host": "web"}}], "mirrors": [], "retries": {"attempts": 1,
                                                                                 "retryOn": "envoy-ratelimited"}}])
    rule = res("DestinationRule", "web", "app", host="web", workloadSelector={}, trafficPolicy={
        "tls": {"mode": "SIMPLE"}, "loadBalancer": {"localityLbSetting": {}}})
    _, notes, _ = build(v, rule)
    assert set(notes) >= {
        "VirtualService/app/web: spec.tls is not implemented yet",
        "VirtualService/app/web: spec.exportTo ['.'] is not implemented yet (visible to every namespace)",
        "VirtualService/app/web: spec.http[0].mirrors is not implemented yet",
        "VirtualService/app/web: spec.http[0].retries.retryOn condition 'envoy-ratelimited' is not implemented yet",
        "DestinationRule/app/web: spec.workloadSelector is not implemented yet",
        "DestinationRule/app/web: spec.trafficPolicy.tls.mode SIMPLE is not implemented yet (TLS origination); "
        "the hop is unchanged",
        "DestinationRule/app/web: spec.trafficPolicy.loadBalancer.localityLbSetting is not implemented yet",
    }


def test_only_what_source_matches_read_travels_per_proxy() -> None:
    cfg, _, _ = build()
    assert (cfg.workload_namespace, cfg.workload_labels) == ("", {})
    v = res("VirtualService", "web", "app", hosts=["web"], http=[
        {"match": [{"sourceLabels": {"app": "client"}}], "route": [{"destination": {"host": "web"}}]}])
    reg = Registry.from_objects([*BASE, pod("client-2", "app", "198.18.0.41", app="client", pod="2"), v])
    b = SnapshotBuilder(reg, "cluster.local", "")
    one, two = (b.snapshot_for(ProxyKey("app", p)) for p in ("client", "client-2"))
    assert one.config.workload_labels == {"app": "client"} and one.config.workload_namespace == ""
    # The label nobody matches on travels nowhere (snapshots differ only by their own workload's
    # telemetry metadata: pods of one workload share theirs).
    assert one.config.workload_labels == two.config.workload_labels
    assert one.config.outbound == two.config.outbound
    v["spec"]["http"][0]["match"][0]["sourceNamespace"] = "app"
    cfg = SnapshotBuilder(Registry.from_objects([*BASE, v]), "cluster.local", "").snapshot_for(
        ProxyKey("app", "client")).config
    assert cfg.workload_namespace == "app"


def test_rules_for_hosts_nobody_defines_are_reported() -> None:
    rule = res("DestinationRule", "ghost", "app", host="ghost")
    v = res("VirtualService", "ghost", "app", hosts=["ghost", "*.nowhere.example"],
            http=[{"route": [{"destination": {"host": "ghost"}}]}])
    _, notes, _ = build(rule, v)
    assert set(notes) >= {
        "DestinationRule/app/ghost: host ghost.app.svc.cluster.local matches no Service or ServiceEntry "
        "(wildcard hosts are not implemented); no effect",
        "VirtualService/app/ghost: host ghost.app.svc.cluster.local matches no Service or ServiceEntry; no effect",
        "VirtualService/app/ghost: host *.nowhere.example matches no Service or ServiceEntry; no effect",
    }


def test_service_entry_dns_targets_carry_the_identity_a_static_endpoint_would_get() -> None:
    def entry(location: str) -> dict:
        return res("ServiceEntry", f"vm-{location.lower()}", "app", hosts=[f"{location.lower()}.dns"],
                   addresses=["198.19.9.7" if location == "MESH_INTERNAL" else "198.19.9.8"],
                   ports=[{"number": 80, "name": "http", "protocol": "HTTP"}], location=location, resolution="DNS",
                   endpoints=[{"address": "vm.example", "serviceAccount": "vm-sa", "weight": 2},
                              {"address": "other.example"}])
    plain = res("DestinationRule", "plain", "app", host="mesh_internal.dns", subsets=[
        {"name": "off", "labels": {}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}])
    cfg, _, _ = build(entry("MESH_INTERNAL"), entry("MESH_EXTERNAL"), plain)
    c = clusters(cfg)
    assert c["mesh_internal.dns|80"].dns == (
        model.DnsTarget("vm.example", 80, 2, "spiffe://cluster.local/ns/app/sa/vm-sa"),
        model.DnsTarget("other.example", 80, 1, None))  # no serviceAccount: unknowable before resolution
    assert all(t.identity is None for t in c["mesh_external.dns|80"].dns)
    assert all(t.identity is None for t in c["mesh_internal.dns|80|off"].dns)  # tls DISABLE: plaintext
