"""The protocol-agnostic exchange: what happens to one request, whatever codec carried it.

Both relays (HTTP/1.1 in ``sidecar/http1.py``, HTTP/2 and gRPC in ``sidecar/http2.py``)
call these steps in this order, so every L7 feature is written once:

1. the header policy, ``headers.request_headers`` (hop-by-hop, request id, XFCC; the
   HTTP/1.1 relay applies the same sets in its one-pass head builder);
2. outbound: ``policy.plan_outbound`` (sidecar/http/policy.py): the current router (a config
   push reaches the next request on an open connection of either protocol), ``Router.decide``
   and the route's policies; inbound: ``inbound_decision`` + ``authorize``, the app's address
   after the inbound policy.
   A ``Decision`` with ``status`` set is answered locally (``replies``).
3. the relay moves bytes (codec-specific framing and flow control), arming
   ``Exchange.start_timer`` with the route timeout (504 on expiry);
4. ``Exchange.done(status)``: counted exactly once (``remora_requests_total`` and the
   duration histogram).

Outbound route policies (issue 10: retries and per-try timeouts, fault delay/abort, mirror,
header operations, rewrite, redirect, CORS, pool limits, outlier reports, LEAST_REQUEST
counts, consistent-hash cookies) are ``policy.Plan``'s: the relays call it at their dispatch
and response points. Inbound authorization: ``authorize`` (``Authorizer`` on the context;
None = no policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from control_plane.api.model import Endpoint

from ..labels import GRPC, HTTP
from ..tracing import CLIENT as CLIENT_SPAN
from ..tracing import SERVER as SERVER_SPAN
from ..traffic.flags import NR, UH
from .headers import Headers

if TYPE_CHECKING:
    import asyncio

    from control_plane.api.model import OutboundPort

    from ..accesslog import AccessLog
    from ..labels import Labeler
    from ..routing import Router
    from ..stats import Stats
    from ..tracing import Span, Tracer

INBOUND, OUTBOUND = "inbound", "outbound"
NO_FLAGS = "-"  # Envoy's response_flags when there are none
# Envoy's order of response flags in logs and metrics (a flag not listed sorts last).
_FLAG_ORDER: dict[str, int] = {f: i for i, f in enumerate(
    ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
     "DC", "URX", "SI", "IH", "DPE"))}
INBOUND_CONNECT_TIMEOUT = 5.0  # the hop to the app in the same pod
FORBIDDEN = "RBAC: access denied"
_NO_HEADERS: Headers = []  # shared placeholder, never mutated: no list per exchange


class RequestAttrs:
    """What an authorization policy may look at (Istio's request and connection attributes)."""

    __slots__ = ("method", "path", "authority", "headers", "principal", "port")

    def __init__(self, method: bytes, path: bytes, authority: bytes, headers: Headers,
                 principal: str | None, port: int) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.principal = principal
        self.port = port


# ``authorize(attrs)`` → None to allow, or (status, body) to deny (403 "RBAC: access denied").
Authorizer = Callable[[RequestAttrs], "tuple[int, str] | None"]


class ExchangeContext(Protocol):
    """What the exchange needs from a downstream connection's context (H1Context, H2Context)."""

    router: Router | None
    outbound_port: OutboundPort | None
    inbound_target: tuple[str, int] | None
    peer_identity: str | None
    local_identity: str | None
    current_router: Callable[[], Router] | None
    original_dst: tuple[str, int] | None
    authorizer: Authorizer | None
    stats: Stats
    labels: Labeler | None  # Istio's metric labels (None: only the remora_* series)
    tracer: Tracer | None  # None: tracing off, trace headers pass through untouched
    access_log: AccessLog | None  # None: access logs off


class Decision:
    """Where a request goes (``endpoint``), or the local reply (``status``, ``message``)."""

    __slots__ = ("endpoint", "timeout", "connect_timeout", "service", "route", "status",
                 "message")

    def __init__(self, endpoint: Endpoint | None, timeout: float | None, connect_timeout: float,
                 service: str, route: str = "", status: int = 0, message: str = "") -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.service = service
        self.route = route
        self.status = status
        self.message = message


def current_router(ctx: ExchangeContext) -> Router | None:
    """Outbound: the proxy's current router; on a config push, the service port is looked
    up again in the new one, so an open connection follows the push from its next request."""
    get = ctx.current_router
    if get is not None and ctx.original_dst is not None:
        router = get()
        if router is not ctx.router:
            ctx.router = router
            ctx.outbound_port = router.lookup(*ctx.original_dst)
    return ctx.router


def inbound_decision(ctx: ExchangeContext) -> Decision:
    """Inbound: the app's address (one per connection: it never changes)."""
    assert ctx.inbound_target is not None
    host, port = ctx.inbound_target
    return Decision(Endpoint(host, port), None, INBOUND_CONNECT_TIMEOUT, f"inbound|{port}")


def authorize(ctx: ExchangeContext, method: bytes, path: bytes, authority: bytes,
              headers: Headers) -> Decision | None:
    """Inbound: the policy's verdict; None to allow (also when there is no policy)."""
    authorizer = ctx.authorizer
    if authorizer is None:
        return None
    port = ctx.inbound_target[1] if ctx.inbound_target else 0
    verdict = authorizer(RequestAttrs(method, path, authority, headers, ctx.peer_identity, port))
    if verdict is None:
        return None
    status, message = verdict
    return Decision(None, None, 0.0, f"inbound|{port}", status=status, message=message)


class Exchange:
    """Accounting shared by both relays: one exchange is counted exactly once.

    Besides the remora_* accounting it carries what Istio's telemetry (docs/telemetry.md)
    and Envoy's response flags need, filled in by whoever learns it: ``flags``
    (sidecar/traffic/flags.py names, joined with ","; "-" when none), body byte counts, the
    upstream endpoint it went to, the Istio label key ``lkey`` ("" when metrics labels are
    off), the gRPC status, the span (tracing on), and what the access log prints of the
    request. ``done`` reports it all: the one call of ``stats.exchange_done``, the access
    log and ``Tracer.end`` per exchange.
    """

    __slots__ = ("ctx", "direction", "service", "peer", "started", "finished", "flags",
                 "req_bytes", "resp_bytes", "upstream", "lkey", "grpc_status", "span",
                 "request_id", "method", "path", "req_headers", "protocol", "ended")

    def __init__(self, ctx: ExchangeContext) -> None:
        self.ctx = ctx
        self.direction = INBOUND if ctx.inbound_target is not None else OUTBOUND
        self.service = ""
        # The peer_identity label: the downstream's SPIFFE ID inbound; outbound, the
        # upstream's, set by the relay when it has one.
        self.peer: str | None = ctx.peer_identity
        self.started = time.monotonic()
        self.finished = False
        self.flags = NO_FLAGS
        self.req_bytes = 0
        self.resp_bytes = 0
        self.upstream: Endpoint | None = None
        self.lkey = ""  # inbound: the connection's (relay); outbound: set by ``route_to``
        self.grpc_status = ""  # gRPC only: from the trailers or a trailers-only head
        self.span: Span | None = None
        self.request_id = b""  # the x-request-id this proxy added when the relay keeps it aside
        self.method = self.path = b""
        self.req_headers: Headers = _NO_HEADERS  # the request's list, set by the relay
        self.protocol = ""  # the access log's %PROTOCOL%: HTTP/1.1, HTTP/1.0, HTTP/2
        self.ended = 0.0  # monotonic time ``done`` counted it (a relay's clock for idle timers)

    def restart(self, service: str) -> None:
        """Reuse this object for the next exchange on the connection (HTTP/1.1: one at a time)."""
        self.service = service
        self.peer = self.ctx.peer_identity
        self.started = time.monotonic()
        self.finished = False
        self.flags = NO_FLAGS
        self.req_bytes = self.resp_bytes = 0
        self.upstream = None
        self.request_id = b""

    def add_flag(self, flag: str) -> None:
        """Record an Envoy response flag (UF, UT, NR, UO, URX, DI, FI, UH, UC, DC...), kept in
        Envoy's own order (``UF,URX``), each once."""
        if self.flags == NO_FLAGS:
            self.flags = flag
            return
        have = self.flags.split(",")
        if flag not in have:
            self.flags = ",".join(sorted([*have, flag], key=lambda f: _FLAG_ORDER.get(f, 99)))

    def route_to(self, endpoint: Endpoint | None, service: str, protocol: str = HTTP) -> None:
        """The route decision is known: the upstream endpoint (None: none) and, outbound,
        the cluster's service, which names the reporter=source series (one cached lookup)."""
        self.upstream = endpoint
        if service:
            self.service = service
        labels = self.ctx.labels
        if labels is not None and self.direction == OUTBOUND:
            self.lkey = labels.outbound(service, endpoint, protocol)

    def unrouted(self, decision: Decision, protocol: str = HTTP) -> None:
        """Outbound, answered locally for want of an endpoint: NR (no route: 404, or no
        router) or UH (no healthy upstream)."""
        self.add_flag(NR if decision.status == 404 or not decision.service else UH)
        port = self.ctx.outbound_port
        self.route_to(None, decision.service or (port.service if port is not None else ""),
                      protocol)

    def trace(self, tracer: Tracer, headers: Headers, method: bytes, path: bytes,
              protocol: str) -> Headers:
        """Tracing on, at the request head: start this hop's span; returns the trace headers
        to forward in place of the request's (tracing.h1_rewrite / h2_rewrite)."""
        ctx = self.ctx
        inbound = self.direction == INBOUND
        span, forward = tracer.start(headers, SERVER_SPAN if inbound else CLIENT_SPAN,
                                     span_name(ctx), method, path, protocol)
        self.span = span
        return forward

    def done(self, status: int) -> bool:
        """Count the exchange (once; False if it already was): the remora_* and Istio series,
        the access log line, the span."""
        if self.finished:
            return False
        self.finished = True
        ctx = self.ctx
        self.ended = now = time.monotonic()
        duration = now - self.started
        ctx.stats.request_done(self.direction, self.service, status, duration, self.peer)
        if self.lkey:
            ctx.stats.exchange_done(self.lkey, status, self.grpc_status, self.flags,
                                    self.req_bytes, self.resp_bytes, duration)
        if self.span is not None or ctx.access_log is not None:
            self._report(status, duration)
        return True

    def authority(self) -> bytes:
        """The request's authority when it is not among its headers (HTTP/2's :authority)."""
        return b""

    def _report(self, status: int, duration: float) -> None:
        """The access log line and the span's end (only when either is on)."""
        ctx = self.ctx
        cluster = upstream_cluster(ctx, self.service)
        span = self.span
        log = ctx.access_log
        if log is not None:
            up = self.upstream
            inbound = self.direction == INBOUND
            log.request(time.time() - duration, self.method, self.path, self.protocol, status,
                        self.flags, self.req_bytes, self.resp_bytes, duration, self.req_headers,
                        self.request_id, f"{up.address}:{up.port}" if up else "", cluster,
                        self.peer if inbound else None, None if inbound else self.peer,
                        span.trace_id if span is not None else 0, self.authority())
        tracer = ctx.tracer
        if span is not None and tracer is not None:
            self.span = None
            tracer.end(span, status, self.flags, cluster, self.peer, self.req_bytes,
                       self.resp_bytes, self.request_id)


def inbound_label_keys(ctx: ExchangeContext,
                       transport: asyncio.BaseTransport) -> tuple[str, str]:
    """Inbound: the connection's label keys for HTTP and gRPC requests (reporter=destination),
    looked up once per connection; ("", "") when there are none."""
    labels, dst = ctx.labels, ctx.inbound_target
    if labels is None or dst is None:
        return ("", "")
    peer = transport.get_extra_info("peername")
    src = peer[0] if peer else None
    return (labels.inbound(src, dst, ctx.peer_identity, HTTP),
            labels.inbound(src, dst, ctx.peer_identity, GRPC))


def span_name(ctx: ExchangeContext) -> str:
    """Istio's span name, "<service host>:<port>/*"."""
    dst = ctx.inbound_target
    if dst is not None:
        labels = ctx.labels
        host = labels.inbound_services.get(dst) if labels is not None else None
        return f"{host or 'inbound'}:{dst[1]}/*"
    port = ctx.outbound_port
    return f"{port.service}:{port.port}/*" if port is not None else "outbound/*"


def upstream_cluster(ctx: ExchangeContext, service: str) -> str:
    """Istio's Envoy cluster name: outbound|<port>||<service host>, inbound|<port>||."""
    if ctx.inbound_target is not None:
        return f"inbound|{ctx.inbound_target[1]}||"
    port = ctx.outbound_port
    number = port.port if port is not None else ctx.original_dst[1] if ctx.original_dst else 0
    return f"outbound|{number}||{service}"


def grpc_status(headers: Headers | None) -> str:
    """The grpc-status of trailers or a trailers-only head ("" when absent)."""
    for name, value in headers or ():
        if name == b"grpc-status":
            return value.decode("latin-1")
    return ""
