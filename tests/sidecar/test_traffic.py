"""The pure traffic decisions in sidecar/traffic/: table-driven, time and randomness injected."""

from __future__ import annotations

import collections
import random

import pytest

from control_plane.api import model
from control_plane.api.model import (
    ConnectionPool,
    ConsistentHash,
    CorsPolicy,
    Endpoint,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderOps,
    HeaderPolicy,
    LoadBalancer,
    OutlierDetection,
    Redirect,
    RegexRewrite,
    RetryPolicy,
    Rewrite,
    RouteMatch,
    StringMatch,
)
from sidecar.traffic import cors, fault, flags, headers, lb, retry, rewrite
from sidecar.traffic.outlier import OutlierDetector
from sidecar.traffic.pool import PoolLimits

EPS = tuple(Endpoint(f"198.18.0.{i}", 80) for i in range(1, 5))

# -- load balancing ---------------------------------------------------------------------------


def test_round_robin_is_weighted_and_skips_ejected_hosts() -> None:
    eps = (Endpoint("198.18.0.1", 80, weight=3), Endpoint("198.18.0.2", 80, weight=1))
    b = lb.make(LoadBalancer(model.LB_ROUND_ROBIN), eps, random.Random(1))
    assert collections.Counter(b.choose().address for _ in range(400)) == {"198.18.0.1": 300, "198.18.0.2": 100}
    assert {b.choose([False, True]).address for _ in range(10)} == {"198.18.0.2"}
    assert b.choose([False, False]) is None


def test_random_spreads_by_weight() -> None:
    b = lb.make(LoadBalancer(model.LB_RANDOM), EPS, random.Random(2))
    counts = collections.Counter(b.choose().address for _ in range(4000))
    assert all(850 < n < 1150 for n in counts.values()) and len(counts) == 4


def test_random_and_least_request_follow_unequal_weights() -> None:
    eps = (Endpoint("198.18.0.1", 80, weight=3), Endpoint("198.18.0.2", 80, weight=0),
           Endpoint("198.18.0.3", 80, weight=1))
    for simple in (model.LB_RANDOM, model.LB_LEAST_REQUEST):
        b = lb.make(LoadBalancer(simple), eps, random.Random(4))
        counts = collections.Counter(b.choose().address for _ in range(4000))
        assert "198.18.0.2" not in counts and 2700 < counts["198.18.0.1"] < 3300, (simple, counts)


def test_least_request_prefers_the_idle_endpoint() -> None:
    b = lb.make(LoadBalancer(model.LB_LEAST_REQUEST), EPS[:2], random.Random(3))
    busy = EPS[0]
    for _ in range(5):
        b.started(busy)
    picks = collections.Counter(b.choose().address for _ in range(1000))
    # Power of two choices over 2 hosts: the busy one only when both draws land on it (~1/4).
    assert picks[EPS[1].address] > 700 and picks[busy.address] < 300
    for _ in range(5):
        b.finished(busy)
    assert b.active == [0, 0]


def test_passthrough_chooses_no_endpoint() -> None:
    assert lb.make(LoadBalancer(model.LB_PASSTHROUGH), EPS).choose() is None


def test_ring_hash_is_sticky_and_spreads_keys() -> None:
    b = lb.make(LoadBalancer(consistent_hash=ConsistentHash(header="x-user", minimum_ring_size=256)), EPS)
    owner = {k: b.choose(None, lb.hash64(k)) for k in (f"user{i}" for i in range(400))}
    assert all(b.choose(None, lb.hash64(k)) == e for k, e in owner.items())  # sticky
    assert len({e.address for e in owner.values()}) == 4
    # Ejecting one host moves only its keys.
    usable = [e != EPS[0] for e in EPS]
    moved = [k for k, e in owner.items() if b.choose(usable, lb.hash64(k)) != e]
    assert moved and all(owner[k] == EPS[0] for k in moved)


@pytest.mark.parametrize(("ch", "hdrs", "path", "src", "want_key", "cookie"), [
    (ConsistentHash(header="x-user"), [("X-User", "a"), ("x-user", "b")], "/", "", "a,b", None),
    (ConsistentHash(header="x-user"), [], "/", "", None, None),
    (ConsistentHash(query_param="u"), [], "/p?u=7&u=8", "", "7", None),
    (ConsistentHash(use_source_ip=True), [], "/", "198.18.0.9", "198.18.0.9", None),
    (ConsistentHash(cookie="s"), [("cookie", "a=1; s=abc")], "/", "", "abc", None),
    (ConsistentHash(cookie="s"), [], "/", "", None, None),
    (ConsistentHash(cookie="s", cookie_ttl=60.0, cookie_path="/app"), [], "/", "", "gen",
     's="gen"; Max-Age=60; Path=/app; HttpOnly'),
])
def test_hash_keys(ch: ConsistentHash, hdrs: list, path: str, src: str, want_key: str | None,
                   cookie: str | None) -> None:
    from urllib.parse import parse_qsl

    def query(name: str) -> str | None:
        return next((v for k, v in parse_qsl(path.partition("?")[2]) if k == name), None)

    key, set_cookie = lb.hash_key(ch, hdrs, query, src, lambda: "gen")
    assert key == (lb.hash64(want_key) if want_key is not None else None)
    assert set_cookie == cookie


# -- outlier detection ------------------------------------------------------------------------

def test_consecutive_5xx_ejects_for_base_time_times_ejections_then_returns() -> None:
    od = OutlierDetector(OutlierDetection(consecutive_5xx=3, base_ejection_time=30.0, interval=10.0,
                                          max_ejection_percent=100.0))
    h = ("198.18.0.1", 80)
    assert not od.report(h, 500, 0.0, 4) and not od.report(h, 502, 1.0, 4)
    assert od.report(h, None, 2.0, 4)  # a connect failure counts as 5xx: third in a row
    assert od.is_ejected(h, 31.9) and not od.is_ejected(h, 32.0)
    for t in (33.0, 34.0, 35.0):
        od.report(h, 503, t, 4)
    assert od.is_ejected(h, 35.0 + 59.9) and not od.is_ejected(h, 95.0)  # 2nd ejection: 60 s


def test_a_success_resets_the_count_and_gateway_errors_have_their_own() -> None:
    od = OutlierDetector(OutlierDetection(consecutive_5xx=None, consecutive_gateway_errors=2,
                                          max_ejection_percent=100.0))
    h = ("198.18.0.1", 80)
    od.report(h, 502, 0.0, 2)
    od.report(h, 200, 0.1, 2)
    assert not od.report(h, 500, 0.2, 2)  # 500 is not a gateway error
    od.report(h, 504, 0.3, 2)
    assert od.report(h, 503, 0.4, 2)


def test_the_multiplier_decays_while_the_host_stays_healthy() -> None:
    od = OutlierDetector(OutlierDetection(consecutive_5xx=1, base_ejection_time=10.0, interval=5.0,
                                          max_ejection_percent=100.0))
    h = ("198.18.0.1", 80)
    od.report(h, 500, 0.0, 1)
    od.tick(10.0)  # back
    od.tick(15.0)  # one healthy interval: multiplier 1 → 0
    od.report(h, 500, 15.0, 1)
    assert od.is_ejected(h, 24.9) and not od.is_ejected(h, 25.0)  # 10 s again, not 20 s


def test_max_ejection_percent_but_always_one() -> None:
    od = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=10.0))
    assert od.report(("a", 1), 500, 0.0, 4)  # 10% of 4 hosts: still one may go
    assert not od.report(("b", 1), 500, 0.0, 4)
    od50 = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=50.0))
    assert od50.report(("a", 1), 500, 0.0, 4) and od50.report(("b", 1), 500, 0.0, 4)
    assert not od50.report(("c", 1), 500, 0.0, 4)


def test_min_health_percent_turns_ejection_off() -> None:
    od = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=100.0, min_health_percent=60.0))
    keys = [("a", 1), ("b", 1), ("c", 1)]
    od.report(keys[0], 500, 0.0, 3)
    assert od.usable(keys, 0.0) == [False, True, True]  # 66% healthy
    od.report(keys[1], 500, 0.0, 3)
    assert od.usable(keys, 0.0) == [True, True, True]  # 33% < 60%: use every host


# -- retries ----------------------------------------------------------------------------------

Out = retry.Outcome
ISTIO_DEFAULT = RetryPolicy()


@pytest.mark.parametrize(("on", "outcome", "retried"), [
    (("5xx",), Out(500), True), (("5xx",), Out(404), False), (("5xx",), Out(connect_failure=True), True),
    (("5xx",), Out(reset=True), True), (("5xx",), Out(timed_out=True), True),
    (("gateway-error",), Out(502), True), (("gateway-error",), Out(500), False),
    (("gateway-error",), Out(504), True),
    (("reset",), Out(reset=True), True), (("reset",), Out(503), False),
    (("connect-failure",), Out(connect_failure=True), True), (("connect-failure",), Out(reset=True), False),
    (("retriable-4xx",), Out(409), True), (("retriable-4xx",), Out(429), False),
    (("refused-stream",), Out(refused_stream=True), True), (("refused-stream",), Out(503), False),
    (("retriable-status-codes",), Out(429), True), (("retriable-status-codes",), Out(503), False),
    (("cancelled",), Out(200, grpc_status=1), True), (("deadline-exceeded",), Out(200, grpc_status=4), True),
    (("internal",), Out(200, grpc_status=13), True), (("resource-exhausted",), Out(200, grpc_status=8), True),
    (("unavailable",), Out(200, grpc_status=14), True), (("unavailable",), Out(200, grpc_status=13), False),
    (("unavailable",), Out(200), False),
])
def test_retry_on_conditions(on: tuple[str, ...], outcome: retry.Outcome, retried: bool) -> None:
    p = RetryPolicy(attempts=1, retry_on=on, status_codes=(429,))
    assert retry.should_retry(p, 0, outcome) is retried


@pytest.mark.parametrize(("outcome", "retried"), [
    (Out(connect_failure=True), True), (Out(refused_stream=True), True), (Out(503), True), (Out(200, grpc_status=14), True),
    (Out(200, grpc_status=1), True), (Out(500), False), (Out(502), False), (Out(reset=True), False),
])
def test_istio_default_policy(outcome: retry.Outcome, retried: bool) -> None:
    p = retry.policy(None)
    assert p == ISTIO_DEFAULT and p.attempts == 2
    assert retry.should_retry(p, 0, outcome) is retried
    assert not retry.should_retry(p, 2, outcome)  # two retries made: done


def test_backoff_is_fully_jittered_exponential_from_25ms_capped_at_250ms() -> None:
    assert retry.backoff(1, lambda: 0.999) == pytest.approx(0.025 * 0.999)
    assert retry.backoff(2, lambda: 1.0) == pytest.approx(0.075)
    assert retry.backoff(10, lambda: 1.0) == pytest.approx(0.25)
    assert retry.backoff(3, lambda: 0.0) == 0.0


# -- faults -----------------------------------------------------------------------------------

def test_fault_percentages_over_many_requests() -> None:
    rng = random.Random(9)
    f = Fault(delay=FaultDelay(0.5, 30.0), abort=FaultAbort(http_status=503, percent=10.0))
    got = [fault.decide(f, rng.random) for _ in range(10000)]
    delayed = sum(d.delay == 0.5 for d in got)
    aborted = sum(d.http_status == 503 for d in got)
    assert 2800 < delayed < 3200 and 900 < aborted < 1100
    both = next(d for d in got if d.delay and d.aborts)
    assert both.flags == (flags.DI, flags.FI)


@pytest.mark.parametrize(("f", "want"), [
    (None, fault.NONE),
    (Fault(delay=FaultDelay(1.0)), fault.FaultDecision(1.0, flags=(flags.DI,))),
    (Fault(abort=FaultAbort(grpc_status=14)), fault.FaultDecision(grpc_status=14, flags=(flags.FI,))),
    (Fault(abort=FaultAbort(http_status=500, percent=0.0)), fault.NONE),
])
def test_fault_decisions(f: Fault | None, want: fault.FaultDecision) -> None:
    assert fault.decide(f, lambda: 0.5) == want


# -- CORS -------------------------------------------------------------------------------------

POLICY = CorsPolicy(allow_origins=(StringMatch(exact="https://a.example"), StringMatch(regex="https://.*\\.b\\.example")),
                    allow_methods=("GET", "POST"), allow_headers=("x-a",), expose_headers=("x-b",),
                    max_age=86400.0, allow_credentials=True)
PRE = [("origin", "https://a.example"), ("access-control-request-method", "POST")]


def test_preflight_from_an_allowed_origin_is_answered() -> None:
    assert cors.is_preflight("OPTIONS", PRE) and not cors.is_preflight("GET", PRE)
    p = cors.preflight(POLICY, PRE)
    assert p.respond and dict(p.headers) == {
        "access-control-allow-origin": "https://a.example", "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET,POST", "access-control-allow-headers": "x-a",
        "access-control-max-age": "86400"}


@pytest.mark.parametrize(("forward", "want"), [(True, cors.FORWARD), (False, cors.Preflight(True))])
def test_unmatched_preflight(forward: bool, want: cors.Preflight) -> None:
    policy = CorsPolicy(allow_origins=(StringMatch(exact="https://a.example"),), unmatched_preflights_forward=forward)
    assert cors.preflight(policy, [("origin", "https://evil.example"), ("access-control-request-method", "GET")]) == want


@pytest.mark.parametrize(("origin", "want"), [
    ("https://x.b.example", [("access-control-allow-origin", "https://x.b.example"),
                             ("access-control-allow-credentials", "true"), ("access-control-expose-headers", "x-b")]),
    ("https://c.example", []), (None, []),
])
def test_actual_request_response_headers(origin: str | None, want: list) -> None:
    hdrs = [("origin", origin)] if origin else []
    assert cors.response_headers(POLICY, hdrs) == want


# -- rewrite and redirect ---------------------------------------------------------------------

@pytest.mark.parametrize(("rw", "match", "path", "want"), [
    (Rewrite(uri="/v2"), RouteMatch(uri=StringMatch(prefix="/v1")), "/v1/items?q=1", "/v2/items?q=1"),
    (Rewrite(uri="/"), RouteMatch(uri=StringMatch(prefix="/api/")), "/api/x", "/x"),
    (Rewrite(uri="/new"), RouteMatch(uri=StringMatch(exact="/old")), "/old?a", "/new?a"),
    (Rewrite(uri="/new"), None, "/anything/here", "/new"),
    (Rewrite(uri_regex=RegexRewrite("^/service/([^/]+)(/.*)$", "\\2/instance/\\1")), None, "/service/foo/v1/api?x",
     "/v1/api/instance/foo?x"),
    (Rewrite(uri_regex=RegexRewrite("a", "b")), None, "/aaa", "/bbb"),
    (Rewrite(authority="b.internal"), None, "/same", "/same"),
])
def test_rewrite_path(rw: Rewrite, match: RouteMatch | None, path: str, want: str) -> None:
    assert rewrite.rewrite_path(rw, path, match) == want


def test_rewrite_authority() -> None:
    assert rewrite.rewrite_authority(Rewrite(authority="b.internal"), "a") == "b.internal"
    assert rewrite.rewrite_authority(Rewrite(uri="/x"), "a") == "a"


@pytest.mark.parametrize(("rd", "want"), [
    (Redirect(uri="/new"), "http://a.shop:8080/new?q=1"),
    (Redirect(uri="/new?x=2"), "http://a.shop:8080/new?x=2"),
    (Redirect(authority="b.shop"), "http://b.shop/old?q=1"),
    (Redirect(scheme="https", port=8443), "https://a.shop:8443/old?q=1"),
])
def test_redirect_location(rd: Redirect, want: str) -> None:
    assert rewrite.redirect_location(rd, "http", "a.shop:8080", "/old?q=1") == want


# -- header operations ------------------------------------------------------------------------

def test_header_operations_destination_then_route() -> None:
    dest = HeaderPolicy(request=HeaderOps(set={"x-level": "destination"}, add={"x-d": "1"}))
    route = HeaderPolicy(request=HeaderOps(set={"x-level": "route"}, remove=("x-secret",)),
                         response=HeaderOps(add={"x-served-by": "remora"}))
    out = headers.request([("X-Secret", "s"), ("x-level", "app"), ("accept", "*/*")], dest, route)
    assert out == [("accept", "*/*"), ("x-d", "1"), ("x-level", "route")]
    assert headers.response([("server", "app")], dest, route) == [("server", "app"), ("x-served-by", "remora")]
    assert headers.apply([("a", "1")], HeaderOps(add={"a": "2"})) == [("a", "1"), ("a", "2")]


# -- connection pool --------------------------------------------------------------------------

@pytest.mark.parametrize(("limits", "take", "release", "attr"), [
    (ConnectionPool(max_connections=2), "try_connection", "release_connection", "connections"),
    (ConnectionPool(http1_max_pending_requests=2), "try_pending", "release_pending", "pending"),
    (ConnectionPool(http2_max_requests=2), "try_request", "release_request", "requests"),
    (ConnectionPool(max_retries=2), "try_retry", "release_retry", "retries"),
])
def test_pool_limits_overflow_and_recover(limits: ConnectionPool, take: str, release: str, attr: str) -> None:
    pool = PoolLimits(limits)
    assert [getattr(pool, take)() for _ in range(3)] == [True, True, False]  # the third: 503 UO
    assert pool.overflows == {attr: 1}
    getattr(pool, release)()
    assert getattr(pool, take)()


def test_pool_unlimited_and_requests_per_connection() -> None:
    pool = PoolLimits(ConnectionPool(max_requests_per_connection=1))
    assert all(pool.try_connection() for _ in range(1000))
    assert pool.connection_exhausted(1) and not PoolLimits(ConnectionPool()).connection_exhausted(10**6)


def test_response_flags_are_envoys() -> None:
    assert [flags.NR, flags.UO, flags.UF, flags.URX, flags.UT, flags.DI, flags.FI, flags.UH] == [
        "NR", "UO", "UF", "URX", "UT", "DI", "FI", "UH"]
    assert flags.join([]) == "-" and flags.join([flags.DI, flags.FI]) == "DI,FI"




# -- mirroring --------------------------------------------------------------------------------

def test_mirror_percentage_and_shadow_authority() -> None:
    from control_plane.api.model import HttpRoute
    from sidecar.traffic import mirror

    rng = random.Random(11)
    route = HttpRoute("r", mirror="m|80", mirror_percent=25.0)
    copies = sum(mirror.should_mirror(route, rng.random) for _ in range(4000))
    assert 900 < copies < 1100
    assert mirror.should_mirror(HttpRoute("r", mirror="m|80")) and not mirror.should_mirror(HttpRoute("r"))
    assert not mirror.should_mirror(HttpRoute("r", mirror="m|80", mirror_percent=0.0))
    assert [mirror.shadow_authority(a) for a in ("reviews:9080", "reviews", "[fd00::1]:80", "a.b.c")] == [
        "reviews-shadow:9080", "reviews-shadow", "[fd00::1]-shadow:80", "a.b.c-shadow"]
