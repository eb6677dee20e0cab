"""Istio's traffic API honoured with real traffic, once per codec (HTTP/1.1, HTTP/2; gRPC on
HTTP/2), through two meshed pods and on loopback: one table, two modes.

Each case is YAML (Istio's task YAML unchanged, or a resource written for one feature) and
traffic from a client to apps that record what they get. The ``mesh`` fixture runs the table:

* ``pods`` (root): the real control plane builds the client's snapshot from the YAML; the
  client pod's proxy, iptables and the mTLS hop to the server pod's proxy carry the requests
  (tests/sidecar/pod_harness.py). This is what issue 10 asks to show, so every case runs here,
  and the cases only pods can show (mTLS hop, ServiceEntry, Sidecar, original destinations)
  run only here (``pods_only``).
* ``loopback`` (no root): the same snapshot built in process drives the real relays and
  ``Router`` with a plaintext upstream hop (tests/sidecar/traffic_harness.py). It is kept, not
  retired: it runs where root does not (a developer's laptop, the no-root CI leg), is several
  times faster per case, and pins a failure on the relays rather than the control plane or the
  kernel. Cases that reach into the relay's process run only here (``loopback_only``, each
  says why and names its pod-mode equivalent).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pod_harness import PodHarness
from traffic_harness import Case, Harness

from local_cluster import netns

TASKS = Path(__file__).parent.parent / "control_plane" / "data" / "istio_tasks"
BOOKINFO = ("bookinfo.yaml", "destination-rule-all.yaml")
HTTPBIN_V1, HTTPBIN_V2 = "198.18.2.11", "198.18.2.12"
REVIEWS = {"198.18.1.21": "v1", "198.18.1.22": "v2", "198.18.1.23": "v3"}
CODECS = ["h1", "h2"]
MODES = ["loopback", "pods"]


def config(*sources: str, pod: tuple[str, str] = ("default", "productpage-v1")) -> Case:
    """A case from task files (names in TASKS) and inline YAML; last one wins."""
    return Case(sources, pod, TASKS)


@pytest.fixture(scope="module", params=MODES)
def mesh(request):
    if request.param == "loopback":
        h: Harness | PodHarness = Harness()
        yield h
        h.close()
        return
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(netns.new_prefix("tpods"))
    h = None
    try:
        h = PodHarness(node, Path(sys.executable).parent, [TASKS / f for f in ("bookinfo.yaml", "httpbin.yaml", "tcp-echo.yaml")])
        yield h
    finally:
        if h is not None:
            h.close()
        node.destroy()


# A case that only loopback can run (it reaches into the relay's process); why is said at each.
loopback_only = pytest.mark.parametrize("mesh", ["loopback"], indirect=True)


@pytest.fixture(params=CODECS)
def codec(request, mesh):
    mesh.reset()
    return request.param


@pytest.fixture
def grpc_mesh(mesh):
    """gRPC cases: HTTP/2 only."""
    mesh.reset()
    return mesh


def seen(mesh: Harness, address: str) -> list:
    return mesh.app(address).seen


def echo(body: str) -> dict:
    return json.loads(body)


# -- Istio's task YAML, unchanged --------------------------------------------------------------------


def test_request_routing_by_end_user(mesh, codec):
    mesh.apply(config(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml"))
    jason = mesh.curl(codec, "reviews", 9080, "/reviews/0", "-H", "end-user: jason", n=5)
    other = mesh.curl(codec, "reviews", 9080, "/reviews/0", n=5)
    assert {REVIEWS[echo(b)["app"]] for _, b in jason} == {"v2"}
    assert {REVIEWS[echo(b)["app"]] for _, b in other} == {"v1"}


def test_fault_injection_abort_for_jason(mesh, codec):
    mesh.apply(config(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-ratings-test-abort.yaml"))
    assert [c for c, _ in mesh.curl(codec, "ratings", 9080, "/ratings/0", "-H", "end-user: jason", n=3)] == [500] * 3
    assert [c for c, _ in mesh.curl(codec, "ratings", 9080, "/ratings/0", n=3)] == [200] * 3
    assert seen(mesh, "198.18.1.12") and all("jason" not in str(s.headers) for s in seen(mesh, "198.18.1.12"))


def test_fault_injection_delay_for_jason(mesh, codec):
    mesh.apply(config(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-ratings-test-delay.yaml"))
    t = time.monotonic()
    [(code, _)] = mesh.curl(codec, "ratings", 9080, "/ratings/0", "-H", "end-user: jason", timeout=1)
    assert code == 0 and time.monotonic() - t >= 1.0  # curl gave up: the 7s delay holds it back
    assert seen(mesh, "198.18.1.12") == []
    assert [c for c, _ in mesh.curl(codec, "ratings", 9080, "/ratings/0", n=2)] == [200, 200]


def test_traffic_shifting_50_50(mesh, codec):
    mesh.apply(config(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-50-v3.yaml"))
    got = collections.Counter(REVIEWS[echo(b)["app"]] for _, b in mesh.curl(codec, "reviews", 9080, "/", n=200))
    assert set(got) == {"v1", "v3"} and 70 <= got["v1"] <= 130, got
    mesh.apply(config(*BOOKINFO, "virtual-service-all-v1.yaml", "virtual-service-reviews-v3.yaml"))
    assert {REVIEWS[echo(b)["app"]] for _, b in mesh.curl(codec, "reviews", 9080, "/", n=10)} == {"v3"}


def test_request_timeouts(mesh, codec):
    mesh.apply(config(*BOOKINFO, "request-timeouts.yaml"))
    t = time.monotonic()
    [(code, body)] = mesh.curl(codec, "reviews", 9080, "/delay/2")
    assert (code, body.strip()) == (504, "upstream request timeout") and time.monotonic() - t < 1.5
    t = time.monotonic()
    [(code, _)] = mesh.curl(codec, "ratings", 9080, "/ratings/0")  # the 2s delay fault
    assert code == 200 and time.monotonic() - t >= 2.0


def test_circuit_breaking_overflow_is_503(mesh, codec):
    mesh.apply(config("httpbin.yaml", "circuit-breaking.yaml", pod=("default", "fortio")))
    results: list[int] = []

    def call() -> None:
        results.extend(c for c, _ in mesh.curl(codec, "httpbin", 8000, "/delay/0.5"))
    threads = [threading.Thread(target=call) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # maxConnections 1 + http1MaxPendingRequests 1: two in flight, the rest overflow.
    assert sorted(results) == [200, 200, 503, 503, 503], results
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=2)] == [200, 200]


def test_mirroring_copies_to_v2(mesh, codec):
    mesh.apply(config("httpbin.yaml", "mirroring.yaml", pod=("default", "fortio")))
    out = mesh.curl(codec, "httpbin", 8000, "/headers", n=3)
    assert [echo(b)["app"] for _, b in out] == [HTTPBIN_V1] * 3
    assert mesh.wait(lambda: len(seen(mesh, HTTPBIN_V2)) == 3)
    assert {s.headers["host"] for s in seen(mesh, HTTPBIN_V2)} == {"httpbin-shadow:8000"}
    assert {s.protocol for s in seen(mesh, HTTPBIN_V2)} == {"HTTP/2" if codec == "h2" else "HTTP/1.1"}


def test_mirror_failure_never_fails_the_primary(mesh, codec):
    mesh.apply(config("httpbin.yaml", "mirroring.yaml", pod=("default", "fortio")))
    mesh.app(HTTPBIN_V2).fail = 500
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/headers", n=3)] == [200] * 3


# -- one feature each -------------------------------------------------------------------------------

HTTPBIN_SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def vs(http: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http: {http}
"""


def dr(traffic_policy: str) -> str:
    """httpbin's DestinationRule with ``traffic_policy`` (flow-style YAML)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin}}
spec: {{host: httpbin, trafficPolicy: {traffic_policy}}}
"""


def httpbin(*docs: str) -> Case:
    return config("httpbin.yaml", *docs, pod=("default", "fortio"))


def test_retries_are_seen_at_the_app(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}], retries: {attempts: 3, retryOn: 5xx}}]")))
    mesh.app(HTTPBIN_V1).fail = 500
    [(code, _)] = mesh.curl(codec, "httpbin", 8000, "/")
    assert code == 500 and len(seen(mesh, HTTPBIN_V1)) == 4  # the try and 3 retries
    mesh.app(HTTPBIN_V1).fail, mesh.app(HTTPBIN_V1).seen = None, []
    # a request with a body is replayed whole on each try
    mesh.app(HTTPBIN_V1).fail = 503
    mesh.curl(codec, "httpbin", 8000, "/", "--data-binary", "payload")
    assert [s.body for s in seen(mesh, HTTPBIN_V1)] == [b"payload"] * 4


def test_default_retry_policy_is_istios(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("[{route: [{destination: {host: httpbin, subset: v1}}]}]")))
    mesh.app(HTTPBIN_V1).fail = 503  # retriable-status-codes 503, 2 attempts
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/")] == [503]
    assert len(seen(mesh, HTTPBIN_V1)) == 3
    mesh.app(HTTPBIN_V1).fail, mesh.app(HTTPBIN_V1).seen = 500, []  # not retried by default
    mesh.curl(codec, "httpbin", 8000, "/")
    assert len(seen(mesh, HTTPBIN_V1)) == 1


def test_fault_percentages_within_tolerance(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        " fault: {abort: {httpStatus: 418, percentage: {value: 30}}}}]")))
    codes = collections.Counter(c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=300))
    assert set(codes) == {200, 418} and 60 <= codes[418] <= 120, codes


def test_no_match_is_404(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{match: [{uri: {prefix: /only}}], route: [{destination: {host: httpbin, subset: v1}}]}]")))
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/only/x")] == [200]
    assert mesh.curl(codec, "httpbin", 8000, "/other") == [(404, "no route")]


def test_header_operations(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("""
  - headers:
      request: {set: {x-set: route}, add: {x-added: a}, remove: [x-drop]}
      response: {set: {x-resp: "yes"}, remove: [x-app]}
    route:
    - destination: {host: httpbin, subset: v1}
      headers: {request: {set: {x-dest: d}}}""")))
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, "/", "-i", "-H", "x-drop: 1", "-H", "x-set: client")
    head, _, body = out.partition("\n\n")
    got = echo(body)["headers"]
    assert (got["x-set"], got["x-added"], got["x-dest"], "x-drop" in got) == ("route", "a", "d", False)
    assert "x-resp: yes" in head.lower() and "x-app:" not in head.lower()


def test_rewrite_uri_and_authority(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("""
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: httpbin.internal}
    route: [{destination: {host: httpbin, subset: v1}}]
  - match: [{uri: {prefix: /re}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/regex/\\\\1"}}
    route: [{destination: {host: httpbin, subset: v1}}]""")))
    [(_, body)] = mesh.curl(codec, "httpbin", 8000, "/old/page?q=1")
    assert (echo(body)["path"], echo(body)["headers"]["host"]) == ("/new/page?q=1", "httpbin.internal")
    [(_, body)] = mesh.curl(codec, "httpbin", 8000, "/re/abc")
    assert echo(body)["path"] == "/regex/abc"


def test_redirect_with_location(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{redirect: {uri: /moved, authority: elsewhere:81, redirectCode: 302}}]")))
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, "/x?y=1", "-i")
    assert code == 302 and "location: http://elsewhere:81/moved?y=1" in out.lower()
    assert seen(mesh, HTTPBIN_V1) == []


def test_cors_preflight_and_actual_request(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("""
  - corsPolicy:
      allowOrigins: [{exact: "https://app.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
    route: [{destination: {host: httpbin, subset: v1}}]""")))
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, "/", "-i", "-X", "OPTIONS", "-H", "origin: https://app.example",
                              "-H", "access-control-request-method: POST")
    low = out.lower()
    assert code == 200 and "access-control-allow-origin: https://app.example" in low
    assert "access-control-allow-methods: get,post" in low and "access-control-max-age: 86400" in low
    assert seen(mesh, HTTPBIN_V1) == []  # answered by the proxy
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, "/", "-i", "-H", "origin: https://app.example")
    assert code == 200 and "access-control-allow-origin: https://app.example" in out.lower()


def test_consistent_hash_is_sticky(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}")))
    for user in ("alice", "bob", "carol", "dave"):
        apps = {echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", "-H", f"x-user: {user}", n=10)}
        assert len(apps) == 1
    spread = {echo(b)["app"] for u in range(12) for _, b in mesh.curl(codec, "httpbin", 8000, "/", "-H", f"x-user: u{u}")}
    assert spread == {HTTPBIN_V1, HTTPBIN_V2}


def test_consistent_hash_cookie_is_generated_with_ttl(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s}}}}")))
    [(_, out)] = mesh.curl(codec, "httpbin", 8000, "/", "-i")
    cookie = next(line for line in out.splitlines() if line.lower().startswith("set-cookie:"))
    assert "session=" in cookie and "Max-Age=60" in cookie
    value = cookie.split("session=", 1)[1].split(";")[0].strip('"')
    apps = {echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", "-H", f"cookie: session={value}", n=8)}
    assert len(apps) == 1


def test_least_request_prefers_the_idle_endpoint(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {simple: LEAST_REQUEST}}")))
    slow = [threading.Thread(target=mesh.curl, args=(codec, "httpbin", 8000, "/delay/4")) for _ in range(3)]
    for th in slow:
        th.start()
    assert mesh.wait(lambda: sum(a.active for a in mesh.apps.values()) == 3)
    counts = {a: mesh.app(a).active for a in (HTTPBIN_V1, HTTPBIN_V2)}
    idle = min(counts, key=counts.__getitem__)
    assert counts[idle] < 2  # 3 in flight: at least one more on the other endpoint
    quick = [echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=100)]
    assert sum(a.active for a in mesh.apps.values()) == 3  # the slow ones were in flight throughout
    for th in slow:
        th.join()
    # Power of two choices sends 3 in 4 to the less loaded endpoint (random would be 1 in 2):
    # 63 of 100 is 2.8 standard deviations from either expectation.
    assert quick.count(idle) >= 63, collections.Counter(quick)


def test_outlier_ejection_and_return(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 2,"
                          " interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}")))
    mesh.app(HTTPBIN_V2).fail = 500
    first = mesh.curl(codec, "httpbin", 8000, "/", n=6)
    assert sum(c == 500 for c, _ in first) == 2  # two failures eject it
    assert all(c == 200 for c, _ in first[-2:])
    assert {c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=10)} == {200}  # ejected: all to v1
    mesh.app(HTTPBIN_V2).fail = None
    # Back after baseEjectionTime × ejections (the detector outlives config pushes: the other
    # codec's run may have ejected it once already, so allow for the doubled back-off).
    assert mesh.wait(lambda: {echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=4)}
                     == {HTTPBIN_V1, HTTPBIN_V2}, timeout=4)


def test_outlier_consecutive_gateway_errors(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 0,"
                          " consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}")))
    both = {HTTPBIN_V1, HTTPBIN_V2}
    # An earlier case may have left v2 ejected for a while (back-off): start from both in rotation.
    assert mesh.wait(lambda: {echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=4)} == both,
                     timeout=6)
    mesh.app(HTTPBIN_V2).fail = 500  # a 5xx that is not a gateway error: never ejected here
    assert sum(c == 500 for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=8)) == 4
    mesh.app(HTTPBIN_V2).fail = 502
    # Istio's default retry policy retries neither 500 nor 502: two 502s answer, then it is ejected.
    assert sum(c == 502 for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=8)) == 2
    assert {c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=6)} == {200}
    mesh.app(HTTPBIN_V2).fail = None
    assert mesh.wait(lambda: {echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=4)} == both,
                     timeout=6)


# -- Envoy response flags, as logs and metrics read them -------------------------------------------


def test_response_flags(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("""
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: httpbin, subset: v1}}]
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: httpbin, subset: v1}}]
  - match: [{uri: {prefix: /ok}}]
    route: [{destination: {host: httpbin, subset: v1}}]""")))
    assert mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/abort")) == ["FI"]
    assert mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/nothing")) == ["NR"]
    mesh.app(HTTPBIN_V1).fail = 500
    assert mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/retry")) == ["URX"]
    mesh.app(HTTPBIN_V1).fail = None
    assert mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/ok")) == ["-"]


def test_a_subset_without_endpoints_is_503_uh(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS.replace("{name: v2, labels: {version: v2}}", "{name: v9, labels: {version: v9}}"),
                       vs("[{route: [{destination: {host: httpbin, subset: v9}}]}]")))
    out: list = []
    assert mesh.flags_of(lambda: out.extend(mesh.curl(codec, "httpbin", 8000, "/"))) == ["UH"]
    assert out[0][0] == 503 and seen(mesh, HTTPBIN_V1) == seen(mesh, HTTPBIN_V2) == []


def test_fault_delay_percentage_is_flagged_di(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        " fault: {delay: {fixedDelay: 0.001s, percentage: {value: 50}}}}]")))
    got = collections.Counter(mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/", n=200)))
    assert set(got) == {"DI", "-"} and 70 <= got["DI"] <= 130, got


def test_pool_overflow_is_flagged_uo(mesh, codec):
    mesh.apply(httpbin(dr("{connectionPool: {http: {http2MaxRequests: 1}}}")))

    def burst() -> None:
        threads = [threading.Thread(target=mesh.curl, args=(codec, "httpbin", 8000, "/delay/0.5")) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    flags = mesh.flags_of(burst)
    assert sorted(set(flags)) == ["-", "UO"] and flags.count("UO") == 2, flags


def test_grpc_fault_abort_is_a_grpc_status(grpc_mesh):
    mesh = grpc_mesh
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        " fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}}]")))
    [(code, out)] = mesh.curl("h2", "httpbin", 8000, "/pkg.Svc/Call", "-i", "-H", "content-type: application/grpc",
                              "-H", "te: trailers", "-X", "POST")
    assert code == 200 and "grpc-status: 14" in out.lower()
    assert seen(mesh, HTTPBIN_V1) == []


def test_grpc_retry_on_unavailable(grpc_mesh):
    mesh = grpc_mesh
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}], retries: {attempts: 2, retryOn: unavailable}}]")))
    [(code, out)] = mesh.curl("h2", "httpbin", 8000, "/grpc/14", "-i", "-H", "content-type: application/grpc", "-X", "POST")
    assert code == 200 and "grpc-status: 14" in out.lower() and len(seen(mesh, HTTPBIN_V1)) == 3
    mesh.app(HTTPBIN_V1).seen = []
    mesh.curl("h2", "httpbin", 8000, "/grpc/13", "-H", "content-type: application/grpc", "-X", "POST")
    assert len(seen(mesh, HTTPBIN_V1)) == 1  # INTERNAL is not in retryOn


def test_per_try_timeout_then_504_ut(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        " retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: reset}}]")))
    t = time.monotonic()
    flags = mesh.flags_of(lambda: mesh.curl(codec, "httpbin", 8000, "/delay/1"))
    assert time.monotonic() - t < 2.0 and len(seen(mesh, HTTPBIN_V1)) == 3  # 3 tries of 0.2 s, not 1 s each
    assert flags in (["UT"], ["URX,UT"], ["UT,URX"]), flags


@loopback_only  # swaps in an endpoint nothing listens on (pods: test_service_entry_static_connect_failure)
def test_connect_failure_is_retried_on_another_endpoint(mesh, codec):
    cfg = httpbin(dr("{loadBalancer: {simple: ROUND_ROBIN}}"))
    mesh.apply(cfg)
    (cluster,) = [c for c in mesh.config.clusters if c.service.startswith("httpbin.")]
    dead = dataclasses.replace(cluster.endpoints[0], port=1)  # nothing listens on port 1
    mesh.call(lambda: _swap_endpoints(mesh, cluster.name, (dead, cluster.endpoints[1])))
    start = len(mesh.flags.upstreams)
    codes = [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=6)]
    assert codes == [200] * 6  # Istio's default policy retries connect-failure
    mesh.wait(lambda: len(mesh.flags.upstreams) - start == 6)
    assert {u.port for u in mesh.flags.upstreams[start:]} == {cluster.endpoints[1].port}  # telemetry: who answered


def _swap_endpoints(mesh, name, endpoints):
    from sidecar.routing import Router
    cfg = mesh.config
    clusters = tuple(dataclasses.replace(c, endpoints=endpoints) if c.name == name else c for c in cfg.clusters)
    mesh.config = dataclasses.replace(cfg, clusters=clusters)
    mesh.router = Router(mesh.config, mesh.router)


@loopback_only  # a second address for the service that only the relay's original destination names
def test_passthrough_goes_to_the_original_destination(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {simple: PASSTHROUGH}}")))
    app = mesh.app("original-destination", bind=("127.0.0.3", 8000))
    cfg = mesh.config
    outbound = tuple(dataclasses.replace(o, addresses=(*o.addresses, "127.0.0.3")) if o.service.startswith("httpbin.")
                     else o for o in cfg.outbound)
    mesh.config = dataclasses.replace(cfg, outbound=outbound)
    mesh.call(lambda: setattr(mesh, "router", __import__("sidecar.routing").routing.Router(mesh.config, mesh.router)))
    lp = mesh.port("127.0.0.3", 8000, codec)
    proto = "--http1.1" if codec == "h1" else "--http2-prior-knowledge"
    out = subprocess.run(["curl", "-s", proto, "--max-time", "5", f"http://127.0.0.1:{lp}/pass"],
                         capture_output=True, text=True).stdout
    assert echo(out)["app"] == "original-destination" and app.seen


def test_max_requests_per_connection(mesh, codec):
    mesh.apply(httpbin(dr("{connectionPool: {http: {maxRequestsPerConnection: 1}}}")))
    # Connections pooled before the change that are past the new limit are not reused (Envoy
    # drains them with the old cluster); one opened but never used (an earlier case's client
    # gave up) may carry its one request: the first requests use those up.
    mesh.curl(codec, "httpbin", 8000, "/", n=4)
    before = mesh.upstream_connects()
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=4)] == [200] * 4
    assert mesh.upstream_connects() - before == 4  # a new upstream connection per request
    mesh.apply(httpbin(dr("{connectionPool: {http: {maxRequestsPerConnection: 100}}}")))
    before = mesh.upstream_connects()
    mesh.curl(codec, "httpbin", 8000, "/", n=8)
    assert mesh.upstream_connects() - before <= 2  # reused: at most one per endpoint


def test_a_client_that_gives_up_frees_its_pool_slot(mesh, codec):
    mesh.apply(httpbin(dr("{connectionPool: {http: {http2MaxRequests: 1}}}")))
    assert mesh.curl(codec, "httpbin", 8000, "/delay/1", timeout=0.3)[0][0] == 0  # curl gave up
    # The slot comes back when that exchange ends (HTTP/1.1 takes the client's FIN as a
    # half-close and still waits for the answer), never later: no slot leaks.
    assert mesh.wait(lambda: mesh.curl(codec, "httpbin", 8000, "/")[0][0] == 200, timeout=3)


# -- matches, routes and policies, one case each ---------------------------------------------------


def rule(name: str, match: str, subset: str = "v1") -> str:
    """A VirtualService http rule that marks its responses ``x-rule: name``."""
    return (f"{{match: {match}, headers: {{response: {{set: {{x-rule: {name}}}}}}},"
            f" route: [{{destination: {{host: httpbin, subset: {subset}}}}}]}}")


def rule_of(mesh, codec: str, path: str, *args: str) -> str:
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, path, "-i", *args)
    if code == 404:
        return "404"
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.lower().startswith("x-rule:"))


def test_match_conditions_and_first_match_wins(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("[" + ", ".join([
        rule("exact", "[{uri: {exact: /exact}}]"),
        rule("regex", '[{uri: {regex: "/re[0-9]+"}}]'),
        rule("nocase", "[{uri: {prefix: /CaSe}, ignoreUriCase: true}]"),
        rule("method", "[{method: {exact: PUT}}]"),
        rule("authority", "[{authority: {prefix: httpbin.alt}}]"),
        rule("header-regex", '[{headers: {x-ver: {regex: "v[12]"}}}]'),
        rule("header-prefix", "[{headers: {x-p: {prefix: pre}}}]"),
        rule("without", "[{uri: {prefix: /wo}, withoutHeaders: {x-deny: {}}}]"),
        rule("query", '[{queryParams: {q: {exact: "1"}}}]'),
        rule("port", "[{uri: {prefix: /port}, port: 8000}]"),
        rule("other-port", "[{uri: {prefix: /other-port}, port: 9999}]"),
        rule("scheme", "[{uri: {prefix: /scheme}, scheme: {exact: http}}]"),
        rule("first", "[{uri: {prefix: /first}}]"),
        rule("second", "[{uri: {prefix: /first}}]"),
    ]) + "]")))
    assert rule_of(mesh, codec, "/exact") == "exact"
    assert rule_of(mesh, codec, "/exact/not") == "404"
    assert (rule_of(mesh, codec, "/re42"), rule_of(mesh, codec, "/re4x")) == ("regex", "404")  # the whole path
    assert rule_of(mesh, codec, "/case/x") == "nocase"
    assert rule_of(mesh, codec, "/x", "-X", "PUT") == "method"
    assert rule_of(mesh, codec, "/x", "-H", "host: httpbin.alt:8000") == "authority"
    assert (rule_of(mesh, codec, "/x", "-H", "x-ver: v2"), rule_of(mesh, codec, "/x", "-H", "x-ver: v3")) \
        == ("header-regex", "404")
    assert rule_of(mesh, codec, "/x", "-H", "x-p: prefixed") == "header-prefix"
    assert (rule_of(mesh, codec, "/wo"), rule_of(mesh, codec, "/wo", "-H", "x-deny: 1")) == ("without", "404")
    assert (rule_of(mesh, codec, "/x?q=1"), rule_of(mesh, codec, "/x?q=2")) == ("query", "404")
    assert (rule_of(mesh, codec, "/port"), rule_of(mesh, codec, "/other-port")) == ("port", "404")
    assert rule_of(mesh, codec, "/scheme") == "scheme"
    assert rule_of(mesh, codec, "/first") == "first"


def test_source_labels_and_namespace(mesh, codec):
    rules = "[" + ", ".join([rule("fortio", "[{sourceLabels: {app: fortio}}]"),
                             rule("other-ns", "[{sourceNamespace: other}]"),
                             rule("default-ns", "[{sourceNamespace: default}]", "v2")]) + "]"
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(rules)))  # the client is the fortio pod
    assert rule_of(mesh, codec, "/") == "fortio"
    mesh.apply(config("httpbin.yaml", HTTPBIN_SUBSETS, vs(rules)))  # the client is productpage-v1
    assert rule_of(mesh, codec, "/") == "default-ns"


def test_weighted_destinations_with_subset_and_port(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1, port: {number: 8000}}, weight: 80},"
        " {destination: {host: httpbin, subset: v2, port: {number: 8000}}, weight: 20}]}]")))
    got = collections.Counter(echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=100))
    assert set(got) == {HTTPBIN_V1, HTTPBIN_V2} and 8 <= got[HTTPBIN_V2] <= 34, got  # 20 ± 3.5 sd


def test_redirect_scheme_and_code(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("[{redirect: {scheme: https, uri: /secure, redirectCode: 301}}]")))
    [(code, out)] = mesh.curl(codec, "httpbin", 8000, "/x", "-i")
    location = next(line for line in out.lower().splitlines() if line.startswith("location:"))
    assert code == 301 and location.split(": ", 1)[1].startswith("https://") and location.endswith("/secure")
    assert seen(mesh, HTTPBIN_V1) == []


def test_retry_on_conditions(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        ' retries: {attempts: 2, retryOn: "gateway-error,retriable-4xx,retriable-status-codes,418"}}]')))
    for status, tries in ((502, 3), (504, 3), (409, 3), (418, 3), (500, 1), (404, 1)):
        mesh.app(HTTPBIN_V1).seen = []
        assert mesh.curl(codec, "httpbin", 8000, f"/status/{status}")[0][0] == status
        assert len(seen(mesh, HTTPBIN_V1)) == tries, status


def test_grpc_retry_conditions(grpc_mesh):
    mesh = grpc_mesh
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        ' retries: {attempts: 2, retryOn: "cancelled,deadline-exceeded,internal,resource-exhausted"}}]')))
    for code, tries in ((1, 3), (4, 3), (13, 3), (8, 3), (14, 1)):  # UNAVAILABLE is not listed here
        mesh.app(HTTPBIN_V1).seen = []
        [(status, out)] = mesh.curl("h2", "httpbin", 8000, f"/grpc/{code}", "-i",
                                    "-H", "content-type: application/grpc", "-X", "POST")
        assert status == 200 and f"grpc-status: {code}" in out.lower()
        assert len(seen(mesh, HTTPBIN_V1)) == tries, code


def test_mirror_percentage(mesh, codec):
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}],"
        " mirror: {host: httpbin, subset: v2}, mirrorPercentage: {value: 50}}]")))
    assert {c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=100)} == {200}
    counts: list[int] = []
    mesh.wait(lambda: counts.append(len(seen(mesh, HTTPBIN_V2))) or counts[-1:] == counts[-2:-1], timeout=5)
    assert 30 <= counts[-1] <= 70, counts  # 50 ± 4 sd


def test_round_robin_and_random(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {simple: ROUND_ROBIN}}")))
    apps = [echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=8)]
    assert all(a != b for a, b in zip(apps, apps[1:], strict=False)), apps  # strictly alternating
    mesh.apply(httpbin(dr("{loadBalancer: {simple: RANDOM}}")))
    got = collections.Counter(echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=40))
    assert min(got[HTTPBIN_V1], got[HTTPBIN_V2]) >= 8, got


def test_consistent_hash_source_ip_and_query_parameter(mesh, codec):
    mesh.apply(httpbin(dr("{loadBalancer: {consistentHash: {useSourceIp: true}}}")))
    assert len({echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, "/", n=10)}) == 1
    mesh.apply(httpbin(dr("{loadBalancer: {consistentHash: {httpQueryParameterName: user}}}")))
    for user in ("alice", "bob", "carol"):
        assert len({echo(b)["app"] for _, b in mesh.curl(codec, "httpbin", 8000, f"/?user={user}", n=6)}) == 1
    spread = {echo(b)["app"] for u in range(12) for _, b in mesh.curl(codec, "httpbin", 8000, f"/?user=u{u}")}
    assert spread == {HTTPBIN_V1, HTTPBIN_V2}


# -- the mTLS hop, ServiceEntry and Sidecar: only pods have them (loopback's hop is plaintext, and
# its listeners stand only for the addresses the snapshot captures) -------------------------------

pods_only = pytest.mark.parametrize("mesh", ["pods"], indirect=True)


def service_entry(host: str, address: str, location: str, resolution: str, endpoints: str = "[]") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.split('.')[0]}}}
spec:
  hosts: [{host}]
  addresses: [{address}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: {location}
  resolution: {resolution}
  endpoints: {endpoints}
"""


def destination_rule(host: str, traffic_policy: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host.split('.')[0]}}}
spec: {{host: {host}, trafficPolicy: {traffic_policy}}}
"""


XFCC = "x-forwarded-client-cert"


@pods_only
def test_tls_mode_istio_mutual_and_disable(mesh, codec):
    mesh.apply(httpbin(dr("{tls: {mode: ISTIO_MUTUAL}}")))
    [(_, body)] = mesh.curl(codec, "httpbin", 8000, "/")
    assert "spiffe://cluster.local/ns/default/sa/default" in echo(body)["headers"][XFCC]  # fortio's identity
    mesh.apply(httpbin(dr("{tls: {mode: DISABLE}}")))  # plaintext hop: the server (PERMISSIVE) knows no peer
    [(code, body)] = mesh.curl(codec, "httpbin", 8000, "/")
    assert code == 200 and XFCC not in echo(body)["headers"]


@pods_only
def test_service_entry_static_internal_and_external(mesh, codec):
    endpoints = f"[{{address: {HTTPBIN_V1}}}]"
    mesh.apply(httpbin(service_entry("api.internal", "198.19.9.1", "MESH_INTERNAL", "STATIC", endpoints)))
    [(code, body)] = mesh.curl(codec, "api.internal", 80, "/")
    assert (code, echo(body)["app"]) == (200, HTTPBIN_V1) and XFCC in echo(body)["headers"]  # mTLS
    mesh.apply(httpbin(service_entry("api.external", "198.19.9.2", "MESH_EXTERNAL", "STATIC", endpoints)))
    [(code, body)] = mesh.curl(codec, "api.external", 80, "/")
    assert (code, echo(body)["app"]) == (200, HTTPBIN_V1) and XFCC not in echo(body)["headers"]  # plaintext


@pods_only
def test_service_entry_connect_failure_is_retried_on_another_endpoint(mesh, codec):
    # 198.18.2.99 is on the pod network but no pod has it: connecting times out.
    endpoints = f"[{{address: 198.18.2.99}}, {{address: {HTTPBIN_V1}}}]"
    mesh.apply(httpbin(service_entry("flaky.external", "198.19.9.3", "MESH_EXTERNAL", "STATIC", endpoints),
                       destination_rule("flaky.external", "{loadBalancer: {simple: ROUND_ROBIN},"
                                        " connectionPool: {tcp: {connectTimeout: 0.3s}}}")))
    errors = mesh.metric("remora_upstream_connect_errors_total")
    flags = mesh.flags_of(lambda: mesh.curl(codec, "flaky.external", 80, "/", n=4))
    assert len(seen(mesh, HTTPBIN_V1)) == 4 and flags == ["-"] * 4  # Istio's default policy retries connect-failure
    assert mesh.metric("remora_upstream_connect_errors_total") - errors >= 2  # round robin tried the dead one
    hosts = {r["upstream_host"] for r in mesh.access_log()[-4:]}
    assert hosts == {f"{HTTPBIN_V1}:80"}, hosts
    # Without retries the failure is the answer: 503 UF.
    mesh.apply(httpbin(service_entry("flaky.external", "198.19.9.3", "MESH_EXTERNAL", "STATIC",
                                     "[{address: 198.18.2.99}]"),
                       destination_rule("flaky.external", "{connectionPool: {tcp: {connectTimeout: 0.3s}}}"),
                       vs("[{route: [{destination: {host: flaky.external}}], retries: {attempts: 0}}]")
                       .replace("hosts: [httpbin]", "hosts: [flaky.external]")))
    out: list = []
    assert mesh.flags_of(lambda: out.extend(mesh.curl(codec, "flaky.external", 80, "/"))) == ["UF"]
    assert out[0][0] == 503


@pods_only
def test_service_entry_resolution_none_and_passthrough_go_to_the_original_destination(mesh, codec):
    marked = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct}
spec:
  hosts: [direct.example]
  http: [{headers: {response: {set: {x-rule: direct}}}, route: [{destination: {host: direct.example}}]}]
"""
    mesh.apply(httpbin(service_entry("direct.example", HTTPBIN_V2, "MESH_EXTERNAL", "NONE"), marked))
    [(code, out)] = mesh.curl(codec, "direct.example", 80, "/", "-i")
    assert code == 200 and "x-rule: direct" in out.lower()  # routed by the entry ...
    assert echo(out.partition("\n\n")[2])["app"] == HTTPBIN_V2  # ... to the address the app dialled
    # A PASSTHROUGH DestinationRule sends to the original destination, not to the endpoints.
    mesh.apply(httpbin(service_entry("direct.example", HTTPBIN_V2, "MESH_EXTERNAL", "STATIC",
                                     f"[{{address: {HTTPBIN_V1}}}]"), marked,
                       destination_rule("direct.example", "{loadBalancer: {simple: PASSTHROUGH}}")))
    [(code, out)] = mesh.curl(codec, "direct.example", 80, "/", "-i")
    assert code == 200 and "x-rule: direct" in out.lower() and echo(out.partition("\n\n")[2])["app"] == HTTPBIN_V2


def point(mesh, name: str, *addresses: str) -> None:
    """Make ``name`` resolve to ``addresses`` (none: not at all) in the client pod's hosts file,
    rewritten in place (``ip netns exec`` bind-mounted this very file over the proxy's /etc/hosts)."""
    path = netns.NETNS_ETC / mesh.client_pod.netns / "hosts"
    kept = [line for line in path.read_text().splitlines() if line.split()[1:] != [name]]
    path.write_text("\n".join([*kept, *(f"{a} {name}" for a in addresses)]) + "\n")


def apps_of(mesh, codec: str, host: str, n: int) -> list:
    return [echo(body)["app"] if code == 200 else code for code, body in mesh.curl(codec, host, 80, "/", n=n)]


def follows(mesh, codec: str, host: str, *apps: str) -> bool:
    """Within a few refresh periods (0.2 s in the pod harness), ``n`` requests reach exactly ``apps``."""
    return mesh.wait(lambda: sorted(apps_of(mesh, codec, host, 2 * len(apps))) == sorted(2 * list(apps)), 5)


ROUND_ROBIN = "{loadBalancer: {simple: ROUND_ROBIN}}"


@pods_only
def test_service_entry_resolution_dns(mesh, codec):
    """Every address the endpoint's name resolves to is an endpoint, re-resolved every refresh."""
    mesh.apply(httpbin())  # the client pod's hosts file exists once a case picked the client
    point(mesh, "httpbin.dns.test", HTTPBIN_V1)
    mesh.apply(httpbin(service_entry("api.dns", "198.19.9.4", "MESH_EXTERNAL", "DNS",
                                     "[{address: httpbin.dns.test}]"),
                       destination_rule("api.dns", ROUND_ROBIN)))
    assert follows(mesh, codec, "api.dns", HTTPBIN_V1)
    [(_, body)] = mesh.curl(codec, "api.dns", 80, "/")
    assert XFCC not in echo(body)["headers"]  # MESH_EXTERNAL: plaintext
    point(mesh, "httpbin.dns.test", HTTPBIN_V1, HTTPBIN_V2)  # two addresses, round robin over both
    assert follows(mesh, codec, "api.dns", HTTPBIN_V1, HTTPBIN_V2)
    assert sorted(apps_of(mesh, codec, "api.dns", 4)) == sorted([HTTPBIN_V1, HTTPBIN_V2] * 2)
    point(mesh, "httpbin.dns.test", HTTPBIN_V2)  # re-pointed: traffic follows
    assert follows(mesh, codec, "api.dns", HTTPBIN_V2)
    assert mesh.metric('remora_dns_resolutions_total{host="httpbin.dns.test",result="success"}') >= 3
    # A name that does not resolve: 503 UH, and the proxy goes on serving the rest.
    mesh.apply(httpbin(service_entry("api.dns", "198.19.9.4", "MESH_INTERNAL", "DNS",
                                     "[{address: httpbin.dns.test, serviceAccount: httpbin}]"),
                       service_entry("gone.dns", "198.19.9.5", "MESH_EXTERNAL", "DNS",
                                     "[{address: nowhere.dns.test}]")))
    out: list = []
    assert mesh.flags_of(lambda: out.extend(mesh.curl(codec, "gone.dns", 80, "/"))) == ["UH"]
    assert out[0][0] == 503
    assert follows(mesh, codec, "api.dns", HTTPBIN_V2)
    [(_, body)] = mesh.curl(codec, "api.dns", 80, "/")
    assert XFCC in echo(body)["headers"]  # MESH_INTERNAL with a serviceAccount: the mTLS hop


@pods_only
def test_service_entry_resolution_dns_of_the_hosts_themselves(mesh, codec):
    """No endpoints: the entry's hosts are resolved; a failed lookup keeps the last good addresses."""
    mesh.apply(httpbin())
    point(mesh, "self.dns", HTTPBIN_V1)
    mesh.apply(httpbin(service_entry("self.dns", "198.19.9.6", "MESH_EXTERNAL", "DNS")))
    assert follows(mesh, codec, "self.dns", HTTPBIN_V1)
    failures = mesh.metric('remora_dns_resolutions_total{host="self.dns",result="failure"}')
    point(mesh, "self.dns")  # gone from the hosts file: lookups fail ...
    assert mesh.wait(lambda: mesh.metric('remora_dns_resolutions_total{host="self.dns",result="failure"}')
                     > failures, 10)
    assert apps_of(mesh, codec, "self.dns", 2) == [HTTPBIN_V1] * 2  # ... and the last good address stays
    dump = mesh.client_pod.exec(["curl", "-s", "--max-time", "3", "http://127.0.0.1:15000/config_dump"]).stdout
    seen_by_proxy = json.loads(dump)["dns_resolutions"]["self.dns"]
    assert seen_by_proxy["addresses"] == [HTTPBIN_V1] and seen_by_proxy["error"], seen_by_proxy
    point(mesh, "self.dns", HTTPBIN_V2)
    assert follows(mesh, codec, "self.dns", HTTPBIN_V2)


@pods_only
def test_sidecar_egress_hosts(mesh, codec):
    mesh.apply(config(*BOOKINFO, """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: [./ratings.default.svc.cluster.local]}]
"""))
    assert [c for c, _ in mesh.curl(codec, "ratings", 9080, "/")] == [200]
    before = mesh.metric("remora_passthrough_connections_total")
    mesh.curl(codec, "reviews", 9080, "/", timeout=2)
    # Not in this proxy's configuration: relayed as bytes to the VIP the app dialled (Istio's
    # PassthroughCluster), which no kube-proxy answers here; no reviews pod is reached.
    assert mesh.metric("remora_passthrough_connections_total") - before == 1
    assert all(seen(mesh, ip) == [] for ip in REVIEWS)


TCP_NS = "istio-io-tcp-traffic-shifting"
TCP_ECHO = {"198.18.3.11": "v1", "198.18.3.12": "v2"}


@pods_only
def test_tcp_traffic_shifting(mesh):
    """The TCP traffic shifting task: its YAML unchanged binds the routes to the ingress gateway,
    so sidecars balance over both versions; bound to the sidecars ("mesh") with port 9000
    matched, the 80/20 split of tcp-echo-20-v2.yaml holds per connection, and port 9001 keeps
    the whole service. (Loopback relays only HTTP.)"""
    mesh.apply(config("tcp-echo.yaml", "tcp-echo-all-v1.yaml", pod=(TCP_NS, "curl")))
    got = collections.Counter(TCP_ECHO[r.split()[0]] for r in mesh.tcp("tcp-echo", 9000, n=30))
    assert set(got) == {"v1", "v2"} and all(r.endswith(" hello") for r in mesh.tcp("tcp-echo", 9000)), got
    shifted = (TASKS / "tcp-echo-20-v2.yaml").read_text().replace('- "*"', "- tcp-echo") \
        .replace("- tcp-echo-gateway", "- mesh").replace("port: 31400", "port: 9000")
    mesh.apply(config("tcp-echo.yaml", "tcp-echo-all-v1.yaml", shifted, pod=(TCP_NS, "curl")))
    got = collections.Counter(TCP_ECHO[r.split()[0]] for r in mesh.tcp("tcp-echo", 9000, n=100))
    assert set(got) == {"v1", "v2"} and 8 <= got["v2"] <= 34, got  # 20 ± 3.5 sd
    assert {TCP_ECHO[r.split()[0]] for r in mesh.tcp("tcp-echo", 9001, n=30)} == {"v1", "v2"}


def test_grpc_default_retry_policy_is_istios(grpc_mesh):
    mesh = grpc_mesh
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs("[{route: [{destination: {host: httpbin, subset: v1}}]}]")))
    for code, tries in ((14, 3), (1, 3), (13, 1)):  # unavailable and cancelled, 2 attempts; not internal
        mesh.app(HTTPBIN_V1).seen = []
        mesh.curl("h2", "httpbin", 8000, f"/grpc/{code}", "-H", "content-type: application/grpc", "-X", "POST")
        assert len(seen(mesh, HTTPBIN_V1)) == tries, code


# -- refused streams, maxRetries, minHealthPercent ---------------------------------------------------


def test_retry_on_refused_stream(mesh, codec):
    """Envoy's refused-stream: an upstream RST_STREAM REFUSED_STREAM (the request was never
    processed) is retried. HTTP/1.1 has no streams: the app cannot refuse one, so the condition
    has nothing to match and the single try answers; a 5xx is not a refused stream either."""
    mesh.apply(httpbin(HTTPBIN_SUBSETS, vs(
        "[{route: [{destination: {host: httpbin, subset: v1}}], retries: {attempts: 2, retryOn: refused-stream}}]")))
    mesh.app(HTTPBIN_V1).refuse = 1
    out: list = []
    # Retried by the proxy: one exchange, no flag (a relay passing the reset on logs UC, and curl
    # itself retries the refused stream)
    assert mesh.flags_of(lambda: out.extend(mesh.curl(codec, "httpbin", 8000, "/"))) == ["-"]
    assert out[0][0] == 200
    assert len(seen(mesh, HTTPBIN_V1)) == (2 if codec == "h2" else 1)  # h2: refused, then answered
    mesh.app(HTTPBIN_V1).refuse, mesh.app(HTTPBIN_V1).seen = 0, []
    mesh.app(HTTPBIN_V1).fail = 503
    assert [c for c, _ in mesh.curl(codec, "httpbin", 8000, "/")] == [503]
    assert len(seen(mesh, HTTPBIN_V1)) == 1


def test_max_retries_caps_retries_in_flight(mesh, codec):
    """connectionPool.http.maxRetries 1: of four requests failing together, one is retried; the
    others get their first answer with flag UO (the retry budget's overflow)."""
    mesh.apply(httpbin(HTTPBIN_SUBSETS + "  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}\n", vs("[{route: [{destination: {host: httpbin, subset: v1}}], retries: {attempts: 1, retryOn: 5xx}}]")))
    mesh.app(HTTPBIN_V1).fail = 500
    codes: list[int] = []

    def burst() -> None:  # the tries take 0.5 s: the four first answers come while the retry is out
        threads = [threading.Thread(target=lambda: codes.extend(c for c, _ in mesh.curl(
            codec, "httpbin", 8000, "/delay/0.5"))) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    flags = mesh.flags_of(burst)
    assert codes == [500] * 4 and sorted(flags) == ["UO", "UO", "UO", "URX"], (codes, flags)
    assert len(seen(mesh, HTTPBIN_V1)) == 5  # four tries and one retry


def test_outlier_min_health_percent(mesh, codec):
    """Envoy's panic threshold as Istio's minHealthPercent: with v2 ejected, 1 of 2 hosts (50 %)
    is healthy. minHealthPercent 50: not below it, v2 stays out. 60: below it, ejection is
    ignored and round robin goes on over both (baseEjectionTime 30 s: v2 would be out)."""
    policy = ("{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 2, interval: 1s,"
              " baseEjectionTime: 30s, maxEjectionPercent: 100, minHealthPercent: %d}}")
    mesh.apply(httpbin(dr(policy % 50)))  # a changed policy starts a fresh detector: nobody ejected
    mesh.app(HTTPBIN_V2).fail = 500
    assert sum(c == 500 for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=6)) == 2  # two failures eject it
    assert {c for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=10)} == {200}
    mesh.apply(httpbin(dr(policy % 60)))
    assert sum(c == 500 for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=6)) == 3  # ejected after two ...
    mesh.app(HTTPBIN_V2).seen = []
    assert sum(c == 500 for c, _ in mesh.curl(codec, "httpbin", 8000, "/", n=10)) == 5  # ... yet used: panic
    assert len(seen(mesh, HTTPBIN_V2)) == 5
