"""sidecar/http/policy.py without sockets: the plan a request gets, the head rewrite, pool
admission and the retry bookkeeping (fast; the real traffic is test_traffic_relay.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from control_plane.api.model import ProxyConfig
from sidecar.http.policy import h1_head, plan_outbound
from sidecar.routing import Router
from sidecar.stats import Stats
from sidecar.traffic.retry import Outcome

EP = [{"address": f"10.0.0.{i}", "port": 8080} for i in (1, 2)]


def cfg(route: dict, policy: dict | None = None) -> ProxyConfig:
    return ProxyConfig.from_dict({
        "clusters": [{"name": "web|80", "service": "web.a.svc.cluster.local", "port": 80, "protocol": "http",
                      "endpoints": EP, "policy": policy or {}}],
        "outbound": [{"service": "web.a.svc.cluster.local", "addresses": ["198.18.0.1"], "port": 80,
                      "protocol": "http", "default_cluster": "web|80", "routed": True,
                      "routes": [{"name": "r", "destinations": [{"cluster": "web|80"}], **route}]}],
    })


@dataclass
class Ctx:
    router: Router | None = None
    outbound_port: object = None
    inbound_target: tuple[str, int] | None = None
    peer_identity: str | None = None
    local_identity: str | None = None
    current_router: object = None
    original_dst: tuple[str, int] | None = ("198.18.0.1", 80)
    authorizer: object = None
    stats: Stats = field(default_factory=Stats)


def plan(config: ProxyConfig, path: bytes = b"/", headers: list | None = None, method: bytes = b"GET"):
    r = Router(config, rand=random.Random(1))
    ctx = Ctx(current_router=lambda: r)
    return plan_outbound(ctx, method, path, headers or [(b"Host", b"web")], rand=random.Random(1))  # type: ignore[arg-type]


def test_rewrite_and_header_ops_rebuild_the_http1_head() -> None:
    p = plan(cfg({"matches": [{"uri": {"prefix": "/old"}}], "rewrite": {"uri": "/new", "authority": "web.internal"},
                  "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-drop"]}}}), b"/old/x?q=1",
             [(b"Host", b"web"), (b"X-Drop", b"y")])
    head = b"GET /old/x?q=1 HTTP/1.1\r\nHost: web\r\nX-Drop: y\r\nx-request-id: 1\r\n\r\n"
    assert h1_head(head, p) == (b"GET /new/x?q=1 HTTP/1.1\r\nhost: web.internal\r\nx-request-id: 1\r\n"
                                b"x-a: 1\r\n\r\n")


def test_redirect_fault_and_no_route_are_local_replies_with_flags() -> None:
    p = plan(cfg({"redirect": {"uri": "/moved", "code": 308}, "destinations": []}), b"/x")
    assert (p.status, p.reply_headers) == (308, [(b"location", b"http://web/moved")])
    p = plan(cfg({"fault": {"abort": {"http_status": 418, "percent": 100.0}}}))
    assert (p.status, p.flags) == (418, ["FI"])
    p = plan(cfg({"matches": [{"uri": {"exact": "/only"}}]}), b"/other")
    assert (p.status, p.flags) == (404, ["NR"])


def test_pool_admission_and_release() -> None:
    config = cfg({}, {"connection_pool": {"max_connections": 1, "http1_max_pending_requests": 1}})
    r = Router(config)
    ctx = Ctx(current_router=lambda: r)
    plans = [plan_outbound(ctx, b"GET", b"/", [(b"host", b"web")]) for _ in range(3)]  # type: ignore[arg-type]
    assert [(p.status, p.flags) for p in plans] == [(0, []), (0, []), (503, ["UO"])]
    plans[0].finish()
    plans[0].finish()  # idempotent
    assert plan_outbound(ctx, b"GET", b"/", [(b"host", b"web")]).status == 0  # type: ignore[arg-type]


def test_retry_moves_to_another_endpoint_and_ends_with_urx() -> None:
    p = plan(cfg({"retries": {"attempts": 1, "retry_on": ["5xx"]}}))
    first = p.endpoint
    p.attempt_started()
    assert p.retry(Outcome(status=503)) is not None and p.endpoint != first
    p.attempt_started()
    assert p.retry(Outcome(status=503)) is None and p.flags == ["URX"]
    p = plan(cfg({"retries": {"attempts": 3, "retry_on": ["5xx"]}}))
    assert p.retry(Outcome(status=503), replayable=False) is None  # body too large to replay
    assert p.retry(Outcome(status=404)) is None and p.flags == []


def test_least_request_counts_follow_attempts() -> None:
    p = plan(cfg({}))
    assert p.router is not None and p.endpoint is not None
    balancer = p.router.policy_balancers["web|80"]
    p.attempt_started()
    assert balancer.total == 1  # type: ignore[attr-defined]
    p.finish()
    assert balancer.total == 0  # type: ignore[attr-defined]


def test_max_retries_bounds_retries_in_flight() -> None:
    config = cfg({"retries": {"attempts": 3, "retry_on": ["5xx"]}}, {"connection_pool": {"max_retries": 1}})
    r = Router(config)
    ctx = Ctx(current_router=lambda: r)
    a, b = (plan_outbound(ctx, b"GET", b"/", [(b"host", b"web")]) for _ in range(2))  # type: ignore[arg-type]
    a.attempt_started()
    b.attempt_started()
    assert a.retry(Outcome(status=503)) is not None  # a's retry holds the one slot
    assert b.retry(Outcome(status=503)) is None and b.flags == ["UO"]
    a.attempt_started()
    a.attempt_done(200)  # a's retry ended: the slot is free again
    b2 = plan_outbound(ctx, b"GET", b"/", [(b"host", b"web")])  # type: ignore[arg-type]
    b2.attempt_started()
    assert b2.retry(Outcome(status=503)) is not None
