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

from .headers import Headers

if TYPE_CHECKING:
    from control_plane.api.model import OutboundPort

    from ..routing import Router
    from ..stats import Stats

INBOUND, OUTBOUND = "inbound", "outbound"
NO_FLAGS = "-"  # Envoy's response_flags when there are none
INBOUND_CONNECT_TIMEOUT = 5.0  # the hop to the app in the same pod
FORBIDDEN = "RBAC: access denied"


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

    Besides the remora_* accounting it carries what Istio's telemetry and Envoy's response
    flags need, filled in by whoever learns it: ``flags`` (sidecar/traffic/flags.py names,
    joined with ","; "-" when none), body byte counts, and the upstream endpoint it went to.
    """

    __slots__ = ("ctx", "direction", "service", "peer", "started", "finished", "flags",
                 "req_bytes", "resp_bytes", "upstream")

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

    def restart(self, service: str) -> None:
        """Reuse this object for the next exchange on the connection (HTTP/1.1: one at a time)."""
        self.service = service
        self.peer = self.ctx.peer_identity
        self.started = time.monotonic()
        self.finished = False
        self.flags = NO_FLAGS
        self.req_bytes = self.resp_bytes = 0
        self.upstream = None

    def add_flag(self, flag: str) -> None:
        """Record an Envoy response flag (UF, UT, NR, UO, URX, DI, FI, UH...)."""
        self.flags = flag if self.flags == NO_FLAGS else f"{self.flags},{flag}"

    def done(self, status: int) -> bool:
        """Count the exchange (once; False if it already was)."""
        if self.finished:
            return False
        self.finished = True
        self.ctx.stats.request_done(self.direction, self.service, status,
                                    time.monotonic() - self.started, self.peer)
        return True
