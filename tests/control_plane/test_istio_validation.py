"""Validation of Istio-shaped resources: a bad field is rejected with its path, the last good
version stays in force, and nothing the control plane accepts can be NACKed by a proxy."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from control_plane.api.model import ProxyConfig
from control_plane.api.re2 import Re2Error, translate
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.istio import values
from control_plane.registry import Registry

SERVICE = {"kind": "Service", "metadata": {"name": "web", "namespace": "app"},
           "spec": {"clusterIP": "198.19.0.20", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}


def vs(http: list[dict[str, Any]], api: str = "networking.istio.io/v1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "web", "namespace": "app"},
            "spec": {"hosts": ["web"], "http": http, **spec}}


def dr(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "app"}, "spec": {"host": "web", **spec}}


ROUTE = [{"destination": {"host": "web"}}]


def rejected(obj: dict[str, Any]) -> str:
    reg = Registry.from_objects([SERVICE, obj])
    assert len(reg.errors) == 1, reg.errors
    return reg.errors[0].split(": invalid, ignored: ", 1)[1]


@pytest.mark.parametrize(("obj", "error"), [
    (vs([{"match": [{"uri": {"exact": 404}}], "route": ROUTE}]),
     "spec.http[0].match[0].uri.exact: expected a string, got 404"),
    (vs([{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": ROUTE}]),
     "spec.http[0].match[0].uri: set only one of exact, prefix, regex (got exact, prefix)"),
    (vs([{"match": [{"uri": {}}], "route": ROUTE}]), "spec.http[0].match[0].uri: set one of exact, prefix, regex"),
    (vs([{"match": [{"uri": {"regex": "(a"}}], "route": ROUTE}]),
     "spec.http[0].match[0].uri.regex: '(a' is not a valid RE2 regex: missing ), unterminated subpattern at position 0"),
    (vs([{"match": [{"headers": {"x": {"regex": "(a)\\1"}}}], "route": ROUTE}]),
     "spec.http[0].match[0].headers.x.regex: '(a)\\\\1' is not a valid RE2 regex: back-reference \\1 is not RE2 syntax"),
    (vs([{"match": [{"queryParams": {"q": {"regex": "(?=a)"}}}], "route": ROUTE}]),
     "spec.http[0].match[0].queryParams.q.regex: '(?=a)' is not a valid RE2 regex: lookaround assertions are not "
     "RE2 syntax"),
    (vs([{"match": [{"port": 70000}], "route": ROUTE}]), "spec.http[0].match[0].port: 70000 is outside 1-65535"),
    (vs([{"match": [{"ignoreUriCase": "yes"}], "route": ROUTE}]),
     "spec.http[0].match[0].ignoreUriCase: expected true or false, got 'yes'"),
    (vs([{"match": [{"sourceLabels": {"app": 1}}], "route": ROUTE}]),
     "spec.http[0].match[0].sourceLabels.app: expected a string, got 1"),
    (vs([{"match": "uri", "route": ROUTE}]), "spec.http[0].match: expected a list, got str"),
    (vs([{"match": [{"url": {"exact": "/a"}}], "route": ROUTE}]),
     "spec.http[0].match[0].url: not a match condition (one of authority, gateways, headers, ignoreUriCase, "
     "method, name, port, queryParams, scheme, sourceLabels, sourceNamespace, uri, withoutHeaders)"),
    (vs([{"timeout": "soon", "route": ROUTE}]),
     "spec.http[0].timeout: expected a duration such as 5s, 0.5s, 500ms or 1m30s, got 'soon'"),
    (vs([{"timeout": 5, "route": ROUTE}]),
     "spec.http[0].timeout: expected a duration such as 5s, 0.5s, 500ms or 1m30s, got 5"),
    (vs([{"timeout": "-1s", "route": ROUTE}]),
     "spec.http[0].timeout: expected a duration such as 5s, 0.5s, 500ms or 1m30s, got '-1s'"),
    (vs([{"route": [{"destination": {"host": "web"}, "weight": 101}]}]),
     "spec.http[0].route[0].weight: 101 is outside 0-100"),
    (vs([{"route": [{"destination": {"host": "web", "port": {"number": 0}}}]}]),
     "spec.http[0].route[0].destination.port.number: 0 is outside 1-65535"),
    (vs([{"route": [{"destination": {}}]}]), "spec.http[0].route[0].destination.host: expected a string, got None"),
    (vs([{}]), "spec.http[0]: set exactly one of route, redirect, directResponse"),
    (vs([{"route": ROUTE, "redirect": {"uri": "/x"}}]),
     "spec.http[0]: set exactly one of route, redirect, directResponse (got route, redirect)"),
    (vs([{"redirect": {"uri": "/x", "redirectCode": 200}}]),
     "spec.http[0].redirect.redirectCode: 200 is not one of 301, 302, 303, 307, 308"),
    (vs([{"directResponse": {"status": 700}}]), "spec.http[0].directResponse.status: 700 is outside 200-599"),
    (vs([{"route": ROUTE, "retries": {"attempts": -1}}]), "spec.http[0].retries.attempts: -1 is outside 0-1000"),
    (vs([{"route": ROUTE, "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]),
     "spec.http[0].retries.retryOn: 'sometimes' is not a retry condition (Envoy's names, e.g. 5xx, "
     "connect-failure, unavailable) nor an HTTP status"),
    (vs([{"route": ROUTE, "retries": {"attempts": 2, "retryOn": "5xx,999"}}]),
     "spec.http[0].retries.retryOn (999): 999 is outside 100-599"),
    (vs([{"route": ROUTE, "retries": {"attempts": 2, "perTryTimeout": "2 seconds"}}]),
     "spec.http[0].retries.perTryTimeout: expected a duration such as 5s, 0.5s, 500ms or 1m30s, got '2 seconds'"),
    (vs([{"route": ROUTE, "fault": {"abort": {"httpStatus": 99}}}]),
     "spec.http[0].fault.abort.httpStatus: 99 is outside 200-599"),
    (vs([{"route": ROUTE, "fault": {"abort": {"grpcStatus": "SLOW"}}}]),
     "spec.http[0].fault.abort.grpcStatus: 'SLOW' is not a gRPC status name such as UNAVAILABLE"),
    (vs([{"route": ROUTE, "fault": {"abort": {}}}]),
     "spec.http[0].fault.abort: set exactly one of httpStatus, grpcStatus"),
    (vs([{"route": ROUTE, "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}}}]),
     "spec.http[0].fault.delay.percentage.value: 150 is outside 0-100"),
    (vs([{"route": ROUTE, "mirrorPercentage": {"value": "all"}}]),
     "spec.http[0].mirrorPercentage.value: expected a number, got 'all'"),
    (vs([{"route": ROUTE, "rewrite": {"uriRegexRewrite": {"match": "(?<=x)y", "rewrite": "z"}}}]),
     "spec.http[0].rewrite.uriRegexRewrite.match: '(?<=x)y' is not a valid RE2 regex: lookaround assertions are "
     "not RE2 syntax"),
    (vs([{"route": ROUTE, "headers": {"request": {"set": {"x": 1}}}}]),
     "spec.http[0].headers.request.set.x: expected a string, got 1"),
    (vs([{"route": ROUTE, "corsPolicy": {"allowOrigins": [{"regex": "a++"}]}}]),
     "spec.http[0].corsPolicy.allowOrigins[0].regex: 'a++' is not a valid RE2 regex: possessive quantifiers are "
     "not RE2 syntax"),
    (vs([], tcp=[{"route": [{"destination": {"host": "web"}, "weight": 0}]}]),
     "spec.tcp[0].route: weights add up to 0"),
    (vs(ROUTE, api="networking.istio.io/v2"),
     "apiVersion: 'networking.istio.io/v2' is not served; use networking.istio.io/v1"),
    (dr(trafficPolicy={"loadBalancer": {"simple": "FASTEST"}}),
     "spec.trafficPolicy.loadBalancer.simple: 'FASTEST' is not one of ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, "
     "RANDOM, PASSTHROUGH, UNSPECIFIED"),
    (dr(trafficPolicy={"loadBalancer": {"consistentHash": {}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie, useSourceIp, "
     "httpQueryParameterName"),
    (dr(trafficPolicy={"connectionPool": {"http": {"maxRetries": -1}}}),
     "spec.trafficPolicy.connectionPool.http.maxRetries: -1 is less than 0"),
    (dr(trafficPolicy={"connectionPool": {"tcp": {"maxConnections": "1"}}}),
     "spec.trafficPolicy.connectionPool.tcp.maxConnections: expected an integer, got '1'"),
    (dr(trafficPolicy={"connectionPool": {"tcp": {"connectTimeout": "0s"}}}),
     "spec.trafficPolicy.connectionPool.tcp.connectTimeout: '0s' is shorter than 1ms"),
    (dr(trafficPolicy={"outlierDetection": {"maxEjectionPercent": 120}}),
     "spec.trafficPolicy.outlierDetection.maxEjectionPercent: 120 is outside 0-100"),
    (dr(trafficPolicy={"tls": {"mode": "ON"}}),
     "spec.trafficPolicy.tls.mode: 'ON' is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
    (dr(trafficPolicy={"portLevelSettings": [{"port": {"number": "80"}}]}),
     "spec.trafficPolicy.portLevelSettings[0].port.number: expected an integer, got '80'"),
    (dr(subsets=[{"name": "v1"}, {"name": "v1"}]), "spec.subsets[1].name: duplicate subset 'v1'"),
    ({"kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "app"},
      "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
               "resolution": "STATIC", "endpoints": [{"address": "api.example.com"}]}},
     "spec.endpoints[0].address: 'api.example.com' is not an IP address (resolution STATIC)"),
    ({"kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "app"},
      "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443}], "location": "OUTSIDE"}},
     "spec.location: 'OUTSIDE' is not one of MESH_EXTERNAL, MESH_INTERNAL"),
    ({"kind": "Sidecar", "metadata": {"name": "default", "namespace": "app"},
      "spec": {"egress": [{"hosts": ["reviews"]}]}},
     "spec.egress[0].hosts[0]: 'reviews' is not namespace/host (e.g. ./* or istio-system/*)"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_invalid_field_is_rejected_with_its_path(obj: dict[str, Any], error: str) -> None:
    assert rejected(obj) == error


@pytest.mark.parametrize("api", ["networking.istio.io/v1", "networking.istio.io/v1beta1",
                                 "networking.istio.io/v1alpha3"])
def test_served_versions_are_accepted(api: str) -> None:
    reg = Registry.from_objects([SERVICE, vs([{"route": ROUTE}], api=api)])
    assert reg.errors == [] and "web.app.svc.cluster.local" in reg.virtual_services


def test_a_rejected_update_keeps_the_last_good_version() -> None:
    good = vs([{"route": ROUTE, "timeout": "3s"}])
    first = Registry.from_objects([SERVICE, good])
    bad = copy.deepcopy(good)
    bad["spec"]["http"][0]["timeout"] = "3 seconds"
    second = Registry.from_objects([SERVICE, bad], first.accepted)
    assert second.errors == [
        "VirtualService/app/web: invalid, keeping the last good version: spec.http[0].timeout: expected a duration "
        "such as 5s, 0.5s, 500ms or 1m30s, got '3 seconds'"
    ]
    cfg = SnapshotBuilder(second, "cluster.local", "").snapshot_for(ProxyKey("app", "x")).config
    assert cfg.outbound[0].routes[0].timeout == 3.0
    # The good version carries over build after build; deleting the resource removes it.
    third = Registry.from_objects([SERVICE, bad], second.accepted)
    assert "web.app.svc.cluster.local" in third.virtual_services
    assert "web.app.svc.cluster.local" not in Registry.from_objects([SERVICE], third.accepted).virtual_services
    # A resource that never parsed is just ignored.
    assert Registry.from_objects([SERVICE, bad]).errors[0].startswith("VirtualService/app/web: invalid, ignored:")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600.0), ("1m30s", 90.0), ("0.5s", 0.5), ("500ms", 0.5), ("1.5s", 1.5), ("250us", 0.00025 * 1),
    ("2h45m", 9900.0), ("10s", 10.0),
])
def test_durations_in_protobuf_and_go_form(text: str, seconds: float) -> None:
    if seconds < 0.001:
        with pytest.raises(ValueError, match="shorter than 1ms"):
            values.duration(text, "x")
    else:
        assert values.duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(("pattern", "python"), [
    ("a.*b", "a.*b"), ("^/api/v[0-9]+$", "^/api/v[0-9]+$"), ("x\\z", "x\\Z"),
    ("(?<ver>v[12])", "(?P<ver>v[12])"), ("[[:digit:]]+", "[0-9]+"), ("[]a]", "[\\]a]"),
    ("(?i)jason", "(?i)jason"),
])
def test_re2_syntax_maps_to_python(pattern: str, python: str) -> None:
    assert translate(pattern) == python


@pytest.mark.parametrize(("pattern", "why"), [
    ("(a)\\1", "back-reference"), ("(?P=x)", "back-reference"), ("a(?=b)", "lookaround"), ("a(?!b)", "lookaround"),
    ("(?<=a)b", "lookaround"), ("(?<!a)b", "lookaround"), ("(?>a)", "atomic"), ("(?(1)a|b)", "conditional"),
    ("a*+", "possessive"), ("x\\Z", "\\\\Z"), ("\\p{Greek}", "Unicode"), ("(?U)a*", "ungreedy"), ("[a", "missing ]"),
])
def test_constructs_re2_lacks_are_rejected(pattern: str, why: str) -> None:
    with pytest.raises(Re2Error, match=why):
        translate(pattern)


def test_everything_accepted_passes_the_proxy_decoder() -> None:
    """A resource using every implemented field builds a snapshot the strict decoder takes."""
    full = vs([{
        "name": "all",
        "match": [{"name": "m", "uri": {"regex": "/api/v[0-9]+/.*"}, "scheme": {"exact": "http"},
                   "method": {"prefix": "G"}, "authority": {"exact": "web"}, "headers": {"x-a": {}},
                   "withoutHeaders": {"x-b": {"exact": "1"}}, "queryParams": {"q": {"exact": "1"}},
                   "ignoreUriCase": True, "port": 80, "sourceLabels": {"app": "client"},
                   "sourceNamespace": "app", "gateways": ["mesh"]}],
        "route": [{"destination": {"host": "web", "port": {"number": 80}}, "weight": 100,
                   "headers": {"request": {"set": {"x-d": "1"}}, "response": {"remove": ["server"]}}}],
        "rewrite": {"uri": "/v2/", "authority": "web.internal"},
        "timeout": "1m30s",
        "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,reset,unavailable,429"},
        "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 12.5}},
                  "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}}},
        "mirror": {"host": "web"}, "mirrorPercentage": {"value": 5},
        "headers": {"request": {"add": {"x-r": "1"}}, "response": {"set": {"x-s": "2"}}},
        "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}], "allowMethods": ["GET"],
                       "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"], "maxAge": "24h",
                       "allowCredentials": True, "unmatchedPreflights": "IGNORE"},
    }, {"redirect": {"uri": "/new", "authority": "b", "scheme": "https", "port": 8443, "redirectCode": 308}},
        {"directResponse": {"status": 418, "body": {"string": "teapot"}}}])
    rule = dr(trafficPolicy={
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "path": "/", "ttl": "10s"},
                                            "ringHash": {"minimumRingSize": 64}}},
        "connectionPool": {"tcp": {"maxConnections": 5, "connectTimeout": "250ms"},
                           "http": {"http1MaxPendingRequests": 2, "http2MaxRequests": 9, "maxRequestsPerConnection": 3,
                                    "maxRetries": 4, "idleTimeout": "1m"}},
        "outlierDetection": {"consecutive5xxErrors": 3, "consecutiveGatewayErrors": 2, "interval": "5s",
                             "baseEjectionTime": "15s", "maxEjectionPercent": 50, "minHealthPercent": 20},
        "tls": {"mode": "DISABLE"},
        "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]})
    reg = Registry.from_objects([SERVICE, full, rule])
    assert reg.errors == [] and reg.unsupported == []
    cfg = SnapshotBuilder(reg, "cluster.local", "").snapshot_for(ProxyKey("app", "x")).config
    assert ProxyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
