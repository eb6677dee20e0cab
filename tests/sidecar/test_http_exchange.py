"""The protocol-agnostic exchange steps with a real Router (no sockets, no root)."""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.api.model import ProxyConfig
from sidecar.http.exchange import (
    Exchange,
    authorize,
    current_router,
    inbound_decision,
)
from sidecar.http.policy import plan_outbound
from sidecar.routing import Router
from sidecar.stats import Stats

CFG = {
    "clusters": [
        {"name": "web|80", "service": "web.a.svc.cluster.local", "port": 80, "protocol": "http",
         "connect_timeout": 2.0,
         "endpoints": [{"address": "10.0.0.7", "port": 8080, "identity": "spiffe://x/ns/a/sa/web"}]},
        {"name": "empty|80", "service": "empty.a.svc.cluster.local", "port": 80, "endpoints": []},
    ],
    "outbound": [
        {"service": "web.a.svc.cluster.local", "addresses": ["198.18.0.1"], "port": 80, "protocol": "http",
         "default_cluster": "web|80",
         "routes": [{"name": "slow", "matches": [{"uri": {"prefix": "/slow"}}], "timeout": 1.5,
                     "destinations": [{"cluster": "web|80", "weight": 1}]}]},
        {"service": "empty.a.svc.cluster.local", "addresses": ["198.18.0.2"], "port": 80, "protocol": "http",
         "default_cluster": "empty|80"},
    ],
}


@dataclass
class Ctx:
    router: Router | None = None
    outbound_port: object = None
    inbound_target: tuple[str, int] | None = None
    peer_identity: str | None = None
    local_identity: str | None = None
    current_router: object = None
    original_dst: tuple[str, int] | None = None
    authorizer: object = None
    stats: Stats = field(default_factory=Stats)
    labels: object = None
    tracer: object = None
    access_log: object = None


def router(cfg: dict = CFG) -> Router:
    return Router(ProxyConfig.from_dict(cfg))


def test_outbound_plans_route_time_out_and_answer_locally() -> None:
    r = router()
    ctx = Ctx(current_router=lambda: r, original_dst=("198.18.0.1", 80))
    p = plan_outbound(ctx, b"GET", b"/slow/x", [])  # type: ignore[arg-type]
    assert (p.endpoint.address, p.timeout, p.decision.route, p.service, p.status) == (  # type: ignore[union-attr]
        "10.0.0.7", 1.5, "slow", "web.a.svc.cluster.local", 0)
    assert p.connect_timeout == 2.0
    p = plan_outbound(ctx, b"GET", b"/other", [])  # type: ignore[arg-type]
    assert (p.status, p.decision.route) == (0, "default")  # not ``routed``: the whole service
    ctx.original_dst = ("198.18.0.2", 80)
    ctx.router = None  # looked up again
    p = plan_outbound(ctx, b"GET", b"/", [])  # type: ignore[arg-type]
    assert (p.endpoint, p.status, p.message, p.flags) == (None, 503, "no healthy upstream", ["UH"])
    assert plan_outbound(Ctx(), b"GET", b"/", []).status == 503  # type: ignore[arg-type]


def test_a_config_push_is_seen_by_the_next_decision() -> None:
    routers = [router()]
    ctx = Ctx(current_router=lambda: routers[-1], original_dst=("198.18.0.1", 80))
    assert current_router(ctx) is routers[0]  # type: ignore[arg-type]
    port = ctx.outbound_port
    routers.append(router())
    assert current_router(ctx) is routers[1]  # type: ignore[arg-type]
    assert ctx.outbound_port is not port and ctx.outbound_port is not None


def test_inbound_decision_and_authorizer() -> None:
    ctx = Ctx(inbound_target=("10.0.0.7", 8080), peer_identity="spiffe://x/ns/a/sa/c")
    d = inbound_decision(ctx)  # type: ignore[arg-type]
    assert (d.endpoint.address, d.endpoint.port, d.service) == ("10.0.0.7", 8080, "inbound|8080")  # type: ignore[union-attr]
    assert authorize(ctx, b"GET", b"/", b"w", []) is None  # type: ignore[arg-type]  # no policy
    ctx.authorizer = lambda a: (403, "RBAC: access denied") if a.principal.endswith("/c") else None
    denied = authorize(ctx, b"GET", b"/", b"w", [])  # type: ignore[arg-type]
    assert denied is not None and (denied.status, denied.message) == (403, "RBAC: access denied")


def test_an_exchange_is_counted_exactly_once() -> None:
    ctx = Ctx(inbound_target=("10.0.0.7", 8080), peer_identity="spiffe://x/ns/a/sa/c")
    ex = Exchange(ctx)  # type: ignore[arg-type]
    ex.restart("inbound|8080")
    assert ex.done(200) and not ex.done(504)
    assert ctx.stats.requests == {("inbound", "inbound|8080", 200, "spiffe://x/ns/a/sa/c"): 1}
    ex.restart("inbound|8080")  # the next request on the same HTTP/1.1 connection
    assert ex.done(503)
    assert sum(ctx.stats.requests.values()) == 2
