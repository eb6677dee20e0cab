"""Router.decide: Istio's match semantics, table-driven, without sockets."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest

from control_plane.api.model import ProxyConfig
from sidecar.routing import RequestInfo, Router
from sidecar.traffic import flags

CLUSTERS = [
    {"name": "a|80", "service": "a", "port": 80, "protocol": "http",
     "endpoints": [{"address": "198.18.0.1", "port": 8080}]},
    {"name": "a|80|v2", "service": "a", "port": 80, "protocol": "http",
     "endpoints": [{"address": "198.18.0.2", "port": 8080}]},
]


def router(matches: list[dict[str, Any]], routed: bool = True, **extra: Any) -> Router:
    cfg = {"clusters": CLUSTERS, "workload_namespace": "shop", "workload_labels": {"app": "client", "v": "1"},
           "outbound": [{"service": "a", "addresses": ["198.19.0.1"], "port": 80, "protocol": "http",
                         "default_cluster": "a|80", "routed": routed,
                         "routes": [{"name": "hit", "matches": matches,
                                     "destinations": [{"cluster": "a|80|v2"}], **extra}]}]}
    return Router(ProxyConfig.from_dict(cfg))


def decide(r: Router, **req: Any) -> str:
    info = RequestInfo(**{"method": "GET", "path": "/", "port": 80, **req})
    d = r.decide(r.lookup("198.19.0.1", 80), info)
    return d.route if d.status == 0 else f"{d.status} {d.flag}"


H = "headers"
CASES = [
    # (RouteMatch as the snapshot carries it, request, matched?)
    ({"uri": {"exact": "/a"}}, {"path": "/a?x=1"}, True),
    ({"uri": {"exact": "/a"}}, {"path": "/a/"}, False),
    ({"uri": {"prefix": "/api"}}, {"path": "/api/v1"}, True),
    ({"uri": {"prefix": "/api"}}, {"path": "/API/v1"}, False),
    ({"uri": {"prefix": "/api"}, "ignore_uri_case": True}, {"path": "/API/v1"}, True),
    ({"uri": {"exact": "/Api"}, "ignore_uri_case": True}, {"path": "/aPI"}, True),
    ({"uri": {"regex": "/v[0-9]+/.*"}}, {"path": "/v2/items"}, True),
    ({"uri": {"regex": "/v[0-9]+"}}, {"path": "/v2/items"}, False),  # whole-value match, as Envoy
    ({"method": {"exact": "POST"}}, {"method": "POST"}, True),
    ({"method": {"regex": "P(UT|OST)"}}, {"method": "GET"}, False),
    ({"scheme": {"exact": "https"}}, {"scheme": "http"}, False),
    ({"authority": {"prefix": "a."}}, {"authority": "a.shop:80"}, True),
    ({"authority": {"exact": "a"}}, {H: (("Host", "a"),)}, True),  # from the Host header when not given
    ({H: {"x-user": {"exact": "jason"}}}, {H: (("X-User", "jason"),)}, True),
    ({H: {"x-user": {"exact": "jason"}}}, {H: (("x-user", "jason"), ("x-user", "bob"))}, False),
    ({H: {"x-user": {"exact": "jason,bob"}}}, {H: (("x-user", "jason"), ("x-user", "bob"))}, True),  # joined
    ({H: {"x-user": {"regex": ".*bob.*"}}}, {H: (("x-user", "jason"), ("x-user", "bob"))}, True),
    ({H: {"x-user": {}}}, {H: (("x-user", ""),)}, True),  # presence
    ({H: {"x-user": {}}}, {}, False),
    ({"without_headers": {"x-debug": {}}}, {}, True),
    ({"without_headers": {"x-debug": {}}}, {H: (("x-debug", "1"),)}, False),
    ({"without_headers": {"x-debug": {"exact": "1"}}}, {H: (("x-debug", "0"),)}, True),
    ({"query_params": {"q": {"exact": "1"}}}, {"path": "/s?q=1&q=2"}, True),  # the first value
    ({"query_params": {"q": {"exact": "2"}}}, {"path": "/s?q=1&q=2"}, False),
    ({"query_params": {"q": {"regex": "[0-9]+"}}}, {"path": "/s?q=12"}, True),
    ({"query_params": {"Q": {"exact": "1"}}}, {"path": "/s?q=1"}, False),  # keys are case-sensitive
    ({"port": 80}, {}, True),
    ({"port": 81}, {}, False),
    ({"source_labels": {"app": "client"}}, {}, True),  # the proxy's own labels by default
    ({"source_labels": {"app": "other"}}, {}, False),
    ({"source_labels": {"app": "other"}}, {"source_labels": {"app": "other"}}, True),
    ({"source_namespace": "shop"}, {}, True),
    ({"source_namespace": "shop"}, {"source_namespace": "prod"}, False),
    ({"uri": {"prefix": "/"}, "method": {"exact": "GET"}, H: {"a": {"exact": "1"}}}, {H: (("a", "1"),)}, True),
    ({"uri": {"prefix": "/"}, "method": {"exact": "GET"}, H: {"a": {"exact": "1"}}}, {H: (("a", "2"),)}, False),
]


@pytest.mark.parametrize(("match", "request_", "hit"), CASES)
def test_match_conditions(match: dict[str, Any], request_: dict[str, Any], hit: bool) -> None:
    assert decide(router([match]), **request_) == ("hit" if hit else "404 NR")


def test_any_match_of_a_route_and_no_match_is_404_nr() -> None:
    r = router([{"uri": {"exact": "/a"}}, {"uri": {"exact": "/b"}}])
    assert [decide(r, path=p) for p in ("/a", "/b", "/c")] == ["hit", "hit", "404 NR"]
    assert flags.NR == "NR"


def test_first_route_wins_and_an_unrouted_port_falls_back_to_the_service() -> None:
    cfg = {"clusters": CLUSTERS, "outbound": [{
        "service": "a", "addresses": ["198.19.0.1"], "port": 80, "protocol": "http", "default_cluster": "a|80",
        "routes": [{"name": "first", "matches": [{"uri": {"prefix": "/"}}], "destinations": [{"cluster": "a|80|v2"}]},
                   {"name": "second", "destinations": [{"cluster": "a|80"}]}]}]}
    r = Router(ProxyConfig.from_dict(cfg))
    assert decide(r) == "first"
    assert decide(router([{"uri": {"exact": "/x"}}], routed=False)) == "default"


def test_redirect_and_direct_response_are_local_replies() -> None:
    cfg = {"clusters": CLUSTERS, "outbound": [{
        "service": "a", "addresses": ["198.19.0.1"], "port": 80, "protocol": "http", "default_cluster": "a|80",
        "routed": True, "routes": [
            {"name": "moved", "matches": [{"uri": {"prefix": "/old"}}],
             "redirect": {"uri": "/new", "scheme": "https", "code": 308}},
            {"name": "tea", "direct_response": {"status": 418, "body": "teapot"}}]}]}
    r = Router(ProxyConfig.from_dict(cfg))
    port = r.lookup("198.19.0.1", 80)
    d = r.decide(port, RequestInfo("GET", "/old/x?q=1", "a.shop"))
    assert (d.status, d.location, d.cluster) == (308, "https://a.shop/new?q=1", None)
    d = r.decide(port, RequestInfo("GET", "/", "a.shop"))
    assert (d.status, d.message) == (418, "teapot")


def test_the_decision_carries_the_route_policies() -> None:
    r = router([{"uri": {"prefix": "/api"}}], timeout=2.5, fault={"abort": {"http_status": 503, "percent": 10}},
               retries={"attempts": 4}, rewrite={"uri": "/v2"})
    d = r.decide(r.lookup("198.19.0.1", 80), RequestInfo("GET", "/api/x"))
    assert (d.timeout, d.http_route.retries.attempts, d.http_route.rewrite.uri) == (2.5, 4, "/v2")
    assert d.match.uri.prefix == "/api" and d.destination.cluster == "a|80|v2"
    assert not r.is_fixed(r.lookup("198.19.0.1", 80))  # policies: no decision reuse


def test_weighted_destinations() -> None:
    cfg = {"clusters": CLUSTERS, "outbound": [{
        "service": "a", "addresses": ["198.19.0.1"], "port": 80, "protocol": "http", "default_cluster": "a|80",
        "routed": True, "routes": [{"name": "split", "destinations": [
            {"cluster": "a|80", "weight": 90}, {"cluster": "a|80|v2", "weight": 10}]}]}]}
    r = Router(ProxyConfig.from_dict(cfg), rand=random.Random(5))
    port = r.lookup("198.19.0.1", 80)
    counts = collections.Counter(r.decide(port, RequestInfo("GET", "/")).cluster.name for _ in range(2000))
    assert 140 < counts["a|80|v2"] < 260


def test_resolve_keeps_working_for_byte_level_callers() -> None:
    r = router([{H: {"x-v": {"exact": "2"}}}])
    port = r.lookup("198.19.0.1", 80)
    assert r.resolve(port, b"GET", b"/", [(b"X-V", b"2")]).route == "hit"
    assert (r.resolve(port, b"GET", b"/", []).status, r.resolve(port, b"GET", b"/", []).flag) == (404, "NR")
    assert r.resolve(None, b"GET", b"/", []).status == 404


def policy_router(policy: dict[str, Any], previous: Router | None = None, clock=lambda: 0.0) -> Router:
    cfg = {"clusters": [{"name": "p|80", "service": "p", "port": 80, "protocol": "http", "policy": policy,
                         "endpoints": [{"address": f"198.18.0.{i}", "port": 8080} for i in range(1, 5)]}],
           "outbound": [{"service": "p", "addresses": ["198.19.0.2"], "port": 80, "protocol": "http",
                         "default_cluster": "p|80"}]}
    return Router(ProxyConfig.from_dict(cfg), previous, clock=clock)


def test_consistent_hash_through_decide_is_sticky_and_sets_a_generated_cookie() -> None:
    r = policy_router({"load_balancer": {"consistent_hash": {"header": "x-user"}}})
    port = r.lookup("198.19.0.2", 80)
    by_user = {u: r.decide(port, RequestInfo("GET", "/", headers=(("x-user", u),))).endpoint.address
               for u in ("ann", "bob", "cy", "dee", "eve", "fay")}
    assert all(r.resolve(port, b"GET", b"/", [(b"X-User", u.encode())]).endpoint.address == a
               for u, a in by_user.items())
    assert len(set(by_user.values())) > 1
    c = policy_router({"load_balancer": {"consistent_hash": {"cookie": "s", "cookie_ttl": 60.0}}})
    d = c.decide(c.lookup("198.19.0.2", 80), RequestInfo("GET", "/"))
    value = d.set_cookie.split('"')[1]
    again = c.decide(c.lookup("198.19.0.2", 80), RequestInfo("GET", "/", headers=(("cookie", f"s={value}"),)))
    assert (again.endpoint, again.set_cookie) == (d.endpoint, "")


def test_ejected_endpoints_are_skipped_and_state_survives_a_new_config() -> None:
    now = [0.0]
    policy = {"load_balancer": {"simple": "ROUND_ROBIN"},
              "outlier": {"consecutive_5xx": 1, "max_ejection_percent": 100.0, "base_ejection_time": 30.0}}
    r = policy_router(policy, clock=lambda: now[0])
    port = r.lookup("198.19.0.2", 80)
    r.outliers["p|80"].report(("198.18.0.1", 8080), 503, 0.0, 4)
    seen = {r.decide(port, RequestInfo("GET", "/")).endpoint.address for _ in range(40)}
    assert seen == {"198.18.0.2", "198.18.0.3", "198.18.0.4"}
    again = policy_router(policy, previous=r, clock=lambda: now[0])  # same cluster, new version
    assert again.outliers["p|80"] is r.outliers["p|80"]
    now[0] = 31.0  # the ejection is over
    port = again.lookup("198.19.0.2", 80)
    assert "198.18.0.1" in {again.decide(port, RequestInfo("GET", "/")).endpoint.address for _ in range(40)}


def test_passthrough_cluster() -> None:
    r = policy_router({"load_balancer": {"simple": "PASSTHROUGH"}})
    port = r.lookup("198.19.0.2", 80)
    assert r.decide(port, RequestInfo("GET", "/")).passthrough
    d = r.resolve(port, b"GET", b"/", [])
    assert (d.status, d.flag) == (503, "UH")  # byte-level callers cannot pass through yet
