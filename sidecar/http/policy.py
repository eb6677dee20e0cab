"""The route's policies applied to one outbound exchange, the same for HTTP/1.1 and HTTP/2.

``plan_outbound`` turns one request into a ``Plan``: the route decision (``Router.decide``)
plus everything that happens before dispatch — CORS preflight, fault abort/delay, redirect,
rewrite, request header operations, connection-pool admission (503 UO) — and what the relay
consults afterwards: ``Plan.response_headers`` (header operations, CORS, Set-Cookie),
``Plan.attempt_done`` (outlier detection and LEAST_REQUEST counts), ``Plan.retry`` (Envoy's
retryOn conditions, back-off, a fresh endpoint), ``Plan.finish`` (release the pool slot) and
``Plan.mirror`` (sidecar/http/mirror.py). The relays only move bytes: they call these at their
dispatch and response points. Pure decisions live in sidecar/traffic/.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from control_plane.api.model import Endpoint, RetryPolicy
from sidecar.traffic import cors, fault, flags, retry
from sidecar.traffic import headers as header_ops
from sidecar.traffic.mirror import should_mirror
from sidecar.traffic.pool import PoolLimits
from sidecar.traffic.rewrite import rewrite_authority, rewrite_path

from .exchange import ExchangeContext, current_router
from .replies import GRPC_UNKNOWN, NO_HEALTHY_UPSTREAM

if TYPE_CHECKING:
    from control_plane.api.model import Cluster, OutboundPort

    from ..routing import RouteDecision, Router

BHeaders = list[tuple[bytes, bytes]]
MAX_REPLAY_BYTES = 64 * 1024  # a request body larger than this is not retried
OVERFLOW = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
_PSEUDO_AUTHORITY = (b":authority", b"host")


def _s(b: bytes) -> str:
    return b.decode("latin-1")


def _b(s: str) -> bytes:
    return s.encode("latin-1")


class Plan:
    """One outbound request's decision and the policies the relay applies around it.

    ``status`` set: answer locally with ``status``, ``message`` and ``reply_headers`` (after
    ``delay`` seconds). Else dispatch ``method``/``path``/``headers`` to ``endpoint`` (after
    ``delay``), arming ``per_try`` per attempt and ``timeout`` overall.
    """

    __slots__ = ("router", "decision", "cluster", "endpoint", "timeout", "connect_timeout",
                 "service", "status", "message", "reply_headers", "flags", "delay", "path",
                 "authority", "headers", "changed", "retry_policy", "retries", "pool",
                 "grpc_status", "req_headers", "_admitted", "_active", "mirror_cluster", "_retry_slot",
                 "response_policy")

    def __init__(self, router: Router | None, decision: RouteDecision | None) -> None:
        self.router = router
        self.decision = decision
        self.cluster: Cluster | None = decision.cluster if decision else None
        self.endpoint: Endpoint | None = decision.endpoint if decision else None
        self.timeout = decision.timeout if decision else None
        self.connect_timeout = self.cluster.connect_timeout if self.cluster else 5.0
        self.service = self.cluster.service if self.cluster else ""
        self.status = 0
        self.message = ""
        self.reply_headers: BHeaders = []
        self.flags: list[str] = []
        self.delay = 0.0
        self.path = b""
        self.authority = b""
        self.headers: BHeaders = []
        self.changed = False  # path/authority/headers differ from the request's
        route = decision.http_route if decision else None
        dest = decision.destination if decision else None
        # Whether response_headers may change anything (else a relay may pass the head as is).
        self.response_policy = bool(decision is not None and (
            decision.set_cookie
            or (route is not None and (route.cors is not None or (
                route.headers is not None and route.headers.response is not None)))
            or (dest is not None and dest.headers is not None and dest.headers.response is not None)))
        self.retry_policy: RetryPolicy = retry.policy(route)
        self.retries = 0
        self.pool: PoolLimits | None = None
        self.grpc_status: int | None = None  # a fault abort's grpc-status
        self.req_headers: list[tuple[str, str]] = []
        self._admitted = False
        self._active: Endpoint | None = None
        self.mirror_cluster: str | None = None
        self._retry_slot = False

    # -- local replies ----------------------------------------------------------------------
    def reply(self, status: int, message: str, flag: str = "") -> Plan:
        self.status, self.message = status, message
        if flag:
            self.flags.append(flag)
        return self

    @property
    def per_try(self) -> float | None:
        return self.retry_policy.per_try_timeout

    # -- attempts ---------------------------------------------------------------------------
    def attempt_started(self) -> None:
        """The relay sends to ``endpoint`` now (LEAST_REQUEST counts requests in flight)."""
        if self.router is not None and self.cluster is not None and self.endpoint is not None:
            self.router.policy_balancers[self.cluster.name].started(self.endpoint)
            self._active = self.endpoint

    def attempt_done(self, status: int | None) -> None:
        """One attempt ended: ``status`` the upstream's, None when none came (connect failure,
        reset, timeout). Feeds outlier detection and the request counts."""
        ep, self._active = self._active, None
        if self._retry_slot and self.pool is not None:
            self._retry_slot = False
            self.pool.release_retry()
        if ep is None or self.router is None or self.cluster is None:
            return
        self.router.policy_balancers[self.cluster.name].finished(ep)
        detector = self.router.outliers.get(self.cluster.name)
        if detector is not None:
            detector.report((ep.address, ep.port), status, self.router.clock(),
                            len(self.cluster.endpoints))

    def retry(self, outcome: retry.Outcome, replayable: bool = True) -> float | None:
        """After a failed attempt: the back-off before the next one (``endpoint`` updated), or
        None when the exchange ends with this outcome (URX noted when retries ran out)."""
        self.attempt_done(outcome.status)
        p = self.retry_policy
        if not retry.retriable(p, outcome):
            return None
        if self.retries >= p.attempts or not replayable:
            if self.retries:
                self.flags.append(flags.URX)
            return None
        if self.pool is not None:
            if not self.pool.try_retry():  # maxRetries retries in flight already
                self.flags.append(flags.UO)
                return None
            self._retry_slot = True  # held until this retry's attempt ends
        self.retries += 1
        self._rechoose()
        return retry.backoff(self.retries)

    def _rechoose(self) -> None:
        """Another endpoint for the retry (a host other than the one that failed, if it can)."""
        d = self.decision
        if self.router is None or self.cluster is None or d is None:
            return
        again = self.router.rechoose(self.cluster.name, d, self.endpoint)
        if again is not None:
            self.endpoint = again

    def finish(self) -> None:
        """The exchange is over (any outcome): release the pool slot. Idempotent."""
        if self._active is not None or self._retry_slot:
            self.attempt_done(None)
        if self._admitted and self.pool is not None:
            self._admitted = False
            self.pool.release_request()

    # -- response ---------------------------------------------------------------------------
    def response_headers(self, headers: BHeaders) -> BHeaders:
        """The upstream's response headers with the route's response policies applied."""
        d = self.decision
        if d is None or (d.http_route is None and not d.set_cookie):
            return headers
        route = d.http_route
        dest = d.destination
        ops_route = route.headers if route else None
        ops_dest = dest.headers if dest else None
        extra: list[tuple[str, str]] = []
        if route is not None and route.cors is not None:
            extra = cors.response_headers(route.cors, self.req_headers)
        if not (ops_route or ops_dest or extra or d.set_cookie):
            return headers
        pseudo = [(k, v) for k, v in headers if k.startswith(b":")]
        plain = [(_s(k), _s(v)) for k, v in headers if not k.startswith(b":")]
        plain = header_ops.response(plain, ops_dest, ops_route) + extra
        if d.set_cookie:
            plain.append(("set-cookie", d.set_cookie))
        return pseudo + [(_b(k.lower()), _b(v)) for k, v in plain]


def _pool(router: Router, cluster: Cluster) -> PoolLimits | None:
    limits = cluster.policy.connection_pool
    if (limits.max_connections is None and limits.http2_max_requests is None
            and limits.max_retries is None and limits.max_requests_per_connection is None):
        return None
    pool = router.pools.get(cluster.name)
    if pool is None or pool.limits != limits:
        pool = router.pools[cluster.name] = PoolLimits(limits)
    return pool


def _admit(pool: PoolLimits) -> bool:
    """Envoy's circuit breakers as Istio maps them: at most http2MaxRequests requests in
    flight, and on HTTP/1.1 at most maxConnections busy connections plus
    http1MaxPendingRequests waiting for one (each request holds a connection)."""
    lim = pool.limits
    cap = lim.http2_max_requests
    if lim.max_connections is not None and lim.http1_max_pending_requests is not None:
        conn_cap = lim.max_connections + lim.http1_max_pending_requests
        cap = conn_cap if cap is None else min(cap, conn_cap)
    if cap is not None and pool.requests >= cap:
        pool.overflows["requests"] = pool.overflows.get("requests", 0) + 1
        return False
    pool.requests += 1
    return True


def plan_outbound(ctx: ExchangeContext, method: bytes, path: bytes, headers: BHeaders,
                  grpc: bool = False, source_ip: str = "", authority: bytes | None = None,
                  rand: random.Random | None = None) -> Plan:
    """The decision for one outbound request and the policies around it (module docstring)."""
    router = current_router(ctx)
    if router is None:
        return Plan(None, None).reply(503, "no route: this listener has no router")
    port = ctx.outbound_port
    if port is not None and router.is_plain(port):
        return _plain(router, port, method, path, headers)
    # After the hot path: a function-level import costs a lookup per call.
    from ..routing import RequestInfo  # routing imports the traffic modules; keep import light
    if authority is None:  # HTTP/1.1: the Host header
        authority = next((v for k, v in headers if k.lower() in _PSEUDO_AUTHORITY), b"")
    scheme = next((v for k, v in headers if k == b":scheme"), b"http")
    str_headers = [(_s(k), _s(v)) for k, v in headers if not k.startswith(b":")]
    req = RequestInfo(method=_s(method), path=_s(path), authority=_s(authority), scheme=_s(scheme),
                      headers=tuple(str_headers), port=port.port if port else 0, source_ip=source_ip)
    d = router.decide(port, req)
    plan = Plan(router, d)
    plan.req_headers = str_headers
    plan.path, plan.authority, plan.headers = path, authority, headers
    route = d.http_route
    if route is not None and route.cors is not None and cors.is_preflight(req.method, str_headers):
        pre = cors.preflight(route.cors, str_headers)
        if pre.respond:
            plan.reply_headers = [(_b(k), _b(v)) for k, v in pre.headers]
            return plan.reply(200, "")
    if route is not None and route.fault is not None:
        f = fault.decide(route.fault, (rand or random).random)
        plan.delay = f.delay
        plan.flags.extend(f.flags)
        if f.aborts:
            if f.grpc_status is not None:
                plan.grpc_status = f.grpc_status
                return plan.reply(200 if grpc else 503, "fault filter abort")
            return plan.reply(f.http_status or 503, "fault filter abort")
    if d.status:
        if d.location:
            plan.reply_headers = [(b"location", _b(d.location))]
        return plan.reply(d.status, d.message, d.flag)
    if d.passthrough:
        if ctx.original_dst is None:
            return plan.reply(503, NO_HEALTHY_UPSTREAM, flags.UH)
        plan.endpoint = Endpoint(*ctx.original_dst)
    assert plan.cluster is not None
    if route is not None and route.rewrite is not None:
        rw = route.rewrite
        new_path = _b(rewrite_path(rw, req.path, d.match))
        new_auth = _b(rewrite_authority(rw, req.authority))
        if new_path != path or new_auth != authority:
            plan.path, plan.authority, plan.changed = new_path, new_auth, True
    ops_route = route.headers.request if route and route.headers else None
    ops_dest = d.destination.headers.request if d.destination and d.destination.headers else None
    if ops_route is not None or ops_dest is not None:
        plan.headers = _request_ops(headers, d)
        plan.changed = True
    if plan.changed and plan.authority != authority:
        plan.headers = [(k, plan.authority if k.lower() in _PSEUDO_AUTHORITY else v) for k, v in plan.headers]
    if route is not None and should_mirror(route, (rand or random).random):
        plan.mirror_cluster = route.mirror
    return _admission(router, plan)


def _admission(router: Router, plan: Plan) -> Plan:
    """Take a slot in the cluster's connection pool, or answer 503 UO."""
    assert plan.cluster is not None
    pool = _pool(router, plan.cluster)
    if pool is not None:
        plan.pool = pool
        if not _admit(pool):
            return plan.reply(503, OVERFLOW, flags.UO)
        plan._admitted = True
    return plan


def _plain(router: Router, port: OutboundPort, method: bytes, path: bytes, headers: BHeaders) -> Plan:
    """The hot path: a port with no routes whose cluster needs no per-request key
    (``Router.resolve`` skips decoding the request); retries, LEAST_REQUEST counts and pool
    limits still apply."""
    d = router.resolve(port, method, path, headers)
    plan = Plan(router, d)
    plan.path, plan.headers = path, headers
    if d.status or d.endpoint is None:
        return plan.reply(d.status or 503, d.message or NO_HEALTHY_UPSTREAM, d.flag)
    assert plan.cluster is not None
    return _admission(router, plan)


def _request_ops(headers: BHeaders, d: RouteDecision) -> BHeaders:
    route, dest = d.http_route, d.destination
    pseudo = [(k, v) for k, v in headers if k.startswith(b":")]
    plain = [(_s(k), _s(v)) for k, v in headers if not k.startswith(b":")]
    plain = header_ops.request(plain, dest.headers if dest else None, route.headers if route else None)
    return pseudo + [(_b(k.lower()), _b(v)) for k, v in plain]


def grpc_status_header(plan: Plan) -> bytes:
    return str(plan.grpc_status).encode() if plan.grpc_status is not None else GRPC_UNKNOWN


def h1_head(head: bytes, plan: Plan) -> bytes:
    """An HTTP/1.1 request head (as the relay built it) with the plan's rewrite and header
    operations applied; the relay's framing and mesh headers are kept."""
    if not plan.changed:
        return head
    lines = head[:-4].split(b"\r\n")
    method, _, version = lines[0].split(b" ", 2)
    pairs = [tuple(x.strip() for x in line.split(b":", 1)) for line in lines[1:]]
    headers: BHeaders = [(k, v) for k, v in pairs]  # type: ignore[misc]
    if plan.decision is not None and _has_request_ops(plan.decision):
        headers = _request_ops(headers, plan.decision)
    if plan.authority:
        headers = [(k, plan.authority if k.lower() == b"host" else v) for k, v in headers]
    out = [b"%s %s %s" % (method, plan.path, version)]
    out += [b"%s: %s" % (k, v) for k, v in headers]
    return b"\r\n".join(out) + b"\r\n\r\n"


def _has_request_ops(d: RouteDecision) -> bool:
    route, dest = d.http_route, d.destination
    return bool((route and route.headers and route.headers.request)
                or (dest and dest.headers and dest.headers.request))
