"""Routing: service VIP:port → OutboundPort; HTTP request → route → cluster → endpoint.

A ``Router`` is built once per configuration version; ``ProxyRuntime.apply_config`` swaps in a
new one atomically, so a request always sees one consistent version. Its only mutable state is
the balancers' cursors and counters and the outlier detectors, which a new router takes over
from the previous one for clusters whose policy did not change.

The decision is a pure function of (request, configuration, balancer state):
``Router.decide(port, RequestInfo)`` applies Istio's match semantics (first matching route
wins; every condition of a match must hold; any match of a route will do; a port that a
VirtualService routes answers 404 with flag NR when nothing matches) and returns a
``RouteDecision`` carrying the chosen cluster and endpoint and the route's policies for the
exchange to apply (sidecar/traffic/: retries, fault, mirror, headers, CORS, rewrite).
``Router.resolve`` is the older byte-level entry point kept for the current callers.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from control_plane.api.model import (
    LB_PASSTHROUGH,
    Cluster,
    ConnectionPool,
    Endpoint,
    HttpRoute,
    OutboundPort,
    ProxyConfig,
    RouteMatch,
    TcpRoute,
    WeightedCluster,
)
from sidecar.traffic import flags, lb
from sidecar.traffic.match import string_matches
from sidecar.traffic.outlier import OutlierDetector
from sidecar.traffic.pool import PoolLimits
from sidecar.traffic.rewrite import redirect_location, split

NO_HEALTHY_UPSTREAM = "no healthy upstream"
NO_ROUTE = "no route"
MAX_WEIGHT_SLOTS = lb.MAX_WEIGHT_SLOTS
RETRY_HOST_PICKS = 5  # Istio's host_selection_retry_max_attempts for the previous_hosts predicate


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a route decision reads from one request; the exchange builds it from either codec.

    ``path`` includes the query string; header names in any case (matched case-insensitively;
    a repeated header's values are joined with "," before matching, as Envoy does). ``port`` is
    the service port the app connected to. ``source_labels``/``source_namespace`` default to
    the proxy's own workload (``ProxyConfig.workload_labels``/``workload_namespace``).
    """

    method: str
    path: str
    authority: str = ""
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    port: int = 0
    source_ip: str = ""
    source_labels: Mapping[str, str] | None = None
    source_namespace: str | None = None


@dataclass(slots=True)
class RouteDecision:
    """Where one request goes, or why it cannot go anywhere (``status`` set).

    Read-only for callers: ``resolve`` hands out one shared instance per endpoint on ports
    where nothing is matched or hashed (it saves an allocation per request).
    """

    cluster: Cluster | None = None
    endpoint: Endpoint | None = None
    timeout: float | None = None
    route: str = ""
    status: int = 0  # 0: routed; else the HTTP status to answer with (local reply)
    message: str = ""  # the local reply's body
    flag: str = ""  # Envoy response flag of a local reply (sidecar/traffic/flags.py)
    http_route: HttpRoute | None = None  # the matched route: retries, fault, mirror, headers, cors, rewrite
    destination: WeightedCluster | None = None  # the chosen destination (destination-level headers)
    match: RouteMatch | None = None  # the match that held (a prefix rewrite replaces its prefix)
    location: str = ""  # redirect: the Location header (status is the redirect code)
    set_cookie: str = ""  # consistent hash by a generated cookie: add to the response
    passthrough: bool = False  # connect to the original destination (PASSTHROUGH / resolution NONE)


class Router:
    def __init__(self, config: ProxyConfig, previous: Router | None = None,
                 rand: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rand = rand or random.Random()
        self.clock = clock
        self.clusters = {c.name: c for c in config.clusters}
        self.balancers = {c.name: lb.Balancer(c.endpoints, self.rand) for c in config.clusters}
        self.policy_balancers: dict[str, lb.Balancer] = {}
        self.outliers: dict[str, OutlierDetector] = {}
        # Connection-pool counters per cluster (sidecar/http/policy.py), made on first use.
        self.pools: dict[str, PoolLimits] = {}
        for c in config.clusters:
            old = previous.clusters.get(c.name) if previous else None
            same = old is not None and old.policy == c.policy and old.endpoints == c.endpoints
            self.policy_balancers[c.name] = (
                previous.policy_balancers[c.name] if same and previous else
                lb.make(c.policy.load_balancer, c.endpoints, self.rand))
            if c.policy.outlier is not None:
                keep = previous.outliers.get(c.name) if previous and old and old.policy == c.policy else None
                self.outliers[c.name] = keep or OutlierDetector(c.policy.outlier)
        if previous is not None:  # requests in flight keep counting against their limits
            self.pools.update(previous.pools)
        self.ports: dict[tuple[str, int], OutboundPort] = {}
        for o in config.outbound:
            for a in o.addresses:
                self.ports[(a, o.port)] = o
        self.opaque_ports = frozenset(config.opaque_ports)
        plain = {c.name for c in config.clusters if c.policy.outlier is None
                 and c.policy.load_balancer.consistent_hash is None
                 and c.policy.load_balancer.simple != LB_PASSTHROUGH}
        self._shared: dict[int, RouteDecision] = {}  # id(endpoint) → the plain decision for it
        self._plain_ports = frozenset(id(o) for o in config.outbound
                                      if not o.routes and not o.routed and o.default_cluster in plain)
        # Ports whose every request gets the same endpoint (no match, one destination, one
        # endpoint): a connection may reuse its first decision while this router is current.
        self.fixed_ports = frozenset(id(o) for o in config.outbound if self._is_fixed(o))

    def _is_fixed(self, port: OutboundPort) -> bool:
        if port.routes or port.routed:
            if not port.routes:
                return False
            route = port.routes[0]
            if route.matches or len(route.destinations) != 1 or _has_policies(route):
                return False
            name = route.destinations[0].cluster
        else:
            name = port.default_cluster
        cluster = self.clusters.get(name)
        if cluster is None or cluster.policy.load_balancer.consistent_hash or name in self.outliers:
            return False
        if cluster.policy.connection_pool != ConnectionPool():  # every request needs admission
            return False
        balancer = self.balancers.get(name)
        return balancer is not None and len(set(balancer.ring)) == 1

    def is_fixed(self, port: OutboundPort | None) -> bool:
        """True when ``resolve`` gives every request on ``port`` the same decision."""
        return id(port) in self.fixed_ports

    def is_plain(self, port: OutboundPort) -> bool:
        """True when ``resolve`` decides requests on ``port`` without reading them."""
        return id(port) in self._plain_ports

    def lookup(self, address: str, port: int) -> OutboundPort | None:
        """The service port an app connection to ``address:port`` is for (None: passthrough)."""
        return self.ports.get((address, port))

    def pick(self, cluster_name: str, route: str = "", timeout: float | None = None) -> RouteDecision:
        """Weighted round robin over a cluster, ignoring its policy (used by the TCP relay)."""
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            return RouteDecision(route=route, status=503, message=NO_HEALTHY_UPSTREAM, flag=flags.UH)
        endpoint = self.balancers[cluster_name].choose()
        if endpoint is None:
            return RouteDecision(cluster, route=route, status=503, message=NO_HEALTHY_UPSTREAM, flag=flags.UH)
        return RouteDecision(cluster, endpoint, timeout, route)

    # -- the HTTP decision ---------------------------------------------------------------------

    def decide(self, port: OutboundPort | None, req: RequestInfo) -> RouteDecision:
        """The route decision for one HTTP request on ``port`` (see the module docstring).

        Routes are tried in order; when none matches, a port a VirtualService routes
        (``routed``) answers 404 NR and any other port goes to its whole service.
        """
        if port is None:
            return RouteDecision(status=404, message=f"{NO_ROUTE}: unknown service", flag=flags.NR)
        if not port.routes:
            if port.routed:
                return RouteDecision(status=404, message=NO_ROUTE, flag=flags.NR)
            return self._choose(port.default_cluster, None, None, None, req)
        labels = req.source_labels if req.source_labels is not None else self.config.workload_labels
        namespace = req.source_namespace if req.source_namespace is not None else self.config.workload_namespace
        view = _RequestView(req, labels, namespace)
        for route in port.routes:
            match = view.first_match(route)
            if match is False:
                continue
            m = match if isinstance(match, RouteMatch) else None
            if route.direct_response is not None:
                return RouteDecision(route=route.name, status=route.direct_response.status,
                                     message=route.direct_response.body, http_route=route, match=m)
            if route.redirect is not None:
                location = redirect_location(route.redirect, req.scheme, req.authority, req.path)
                return RouteDecision(route=route.name, status=route.redirect.code, http_route=route, match=m,
                                     location=location)
            dest = self._weighted(route.destinations)
            return self._choose(dest.cluster, route, dest, m, req)
        if port.routed:
            return RouteDecision(status=404, message=NO_ROUTE, flag=flags.NR)
        return self._choose(port.default_cluster, None, None, None, req)

    def _weighted(self, dests: tuple[WeightedCluster, ...]) -> WeightedCluster:
        if len(dests) == 1:
            return dests[0]
        x = self.rand.random() * sum(d.weight for d in dests)
        for d in dests:
            x -= d.weight
            if x < 0:
                return d
        return dests[-1]

    def _choose(self, name: str, route: HttpRoute | None, dest: WeightedCluster | None,
                match: RouteMatch | None, req: RequestInfo) -> RouteDecision:
        d = RouteDecision(route=route.name if route else "default", http_route=route, destination=dest,
                          match=match, timeout=route.timeout if route else None)
        cluster = self.clusters.get(name)
        if cluster is None:
            d.status, d.message, d.flag = 503, NO_HEALTHY_UPSTREAM, flags.UH
            return d
        d.cluster = cluster
        balancer = self.policy_balancers[name]
        if isinstance(balancer, lb.Passthrough):
            d.passthrough = True
            return d
        key = None
        ch = cluster.policy.load_balancer.consistent_hash
        if ch is not None:
            key, cookie = lb.hash_key(ch, req.headers, _query_getter(req.path), req.source_ip,
                                      lambda: secrets.token_hex(8))
            d.set_cookie = cookie or ""
        detector = self.outliers.get(name)
        usable = detector.usable([(e.address, e.port) for e in cluster.endpoints], self.clock()) if detector else None
        d.endpoint = balancer.choose(usable, key)
        if d.endpoint is None:
            d.status, d.message, d.flag = 503, NO_HEALTHY_UPSTREAM, flags.UH
        return d

    def rechoose(self, name: str, previous: RouteDecision, avoid: Endpoint | None = None) -> Endpoint | None:
        """Another endpoint of cluster ``name`` for a retry, preferring one other than ``avoid``
        (Istio's previous_hosts retry predicate, up to 5 picks); None: keep the previous one,
        as a consistent hash or passthrough does."""
        cluster = self.clusters.get(name)
        if cluster is None or previous.passthrough or cluster.policy.load_balancer.consistent_hash:
            return None
        detector = self.outliers.get(name)
        usable = detector.usable([(e.address, e.port) for e in cluster.endpoints], self.clock()) if detector else None
        balancer = self.policy_balancers[name]
        pick = balancer.choose(usable, None)
        for _ in range(RETRY_HOST_PICKS - 1):
            if pick is None or avoid is None or (pick.address, pick.port) != (avoid.address, avoid.port):
                break
            pick = balancer.choose(usable, None)
        return pick

    def resolve(
        self,
        outbound_port: OutboundPort | None,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> RouteDecision:
        """The route decision for one HTTP request on ``outbound_port`` (byte-level callers)."""
        if outbound_port is not None and id(outbound_port) in self._plain_ports:
            # Nothing to match, hash or eject: skip decoding the request (the hot path).
            name = outbound_port.default_cluster
            endpoint = self.policy_balancers[name].choose()
            if endpoint is None:
                return RouteDecision(self.clusters[name], route="default", status=503,
                                     message=NO_HEALTHY_UPSTREAM, flag=flags.UH)
            shared = self._shared.get(id(endpoint))
            if shared is None:
                shared = self._shared[id(endpoint)] = RouteDecision(self.clusters[name], endpoint, None, "default")
            return shared
        authority = next((v for k, v in headers if k.lower() in (b"host", b":authority")), b"")
        scheme = next((v for k, v in headers if k == b":scheme"), b"http")  # HTTP/2 carries it
        req = RequestInfo(
            method=method.decode("latin-1"), path=path.decode("latin-1"), authority=authority.decode("latin-1"),
            scheme=scheme.decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers),
            port=outbound_port.port if outbound_port else 0,
        )
        d = self.decide(outbound_port, req)
        if d.passthrough:  # these callers connect to d.endpoint only; the exchange handles passthrough
            d.status, d.message, d.flag = 503, f"{NO_HEALTHY_UPSTREAM} (PASSTHROUGH needs the exchange)", flags.UH
        return d

    def tcp_cluster(self, port: OutboundPort, source_labels: Mapping[str, str] | None = None) -> str:
        """The cluster a TCP connection on ``port`` goes to (tcp routes, else the service)."""
        labels = source_labels if source_labels is not None else self.config.workload_labels
        for route in port.tcp_routes:
            if _tcp_matches(route, port.port, labels, self.config.workload_namespace):
                return self._weighted(route.destinations).cluster
        return port.default_cluster




def _has_policies(route: HttpRoute) -> bool:
    return any(x is not None for x in (route.redirect, route.direct_response, route.rewrite, route.fault,
                                       route.mirror, route.headers, route.cors))


def _query_getter(path: str) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        query = split(path)[1][1:]
        return next((v for k, v in parse_qsl(query, keep_blank_values=True) if k == name), None)
    return get


def _tcp_matches(route: TcpRoute, port: int, labels: Mapping[str, str], namespace: str) -> bool:
    if not route.matches:
        return True
    for m in route.matches:
        if m.port is not None and m.port != port:
            continue
        if any(labels.get(k) != v for k, v in m.source_labels.items()):
            continue
        if m.source_namespace is not None and m.source_namespace != namespace:
            continue
        return True
    return False


@dataclass(slots=True)
class _RequestView:
    """One request's parts, computed once and only when a match needs them."""

    req: RequestInfo
    labels: Mapping[str, str]
    namespace: str
    _path: str | None = None
    _headers: dict[str, str] | None = None
    _query: dict[str, str] | None = field(default=None)

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = split(self.req.path)[0]
        return self._path

    def header(self, name: str) -> str | None:
        if self._headers is None:
            joined: dict[str, list[str]] = {}
            for k, v in self.req.headers:
                joined.setdefault(k.lower(), []).append(v)
            self._headers = {k: ",".join(vs) for k, vs in joined.items()}
        return self._headers.get(name)

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = {}
            for k, v in parse_qsl(split(self.req.path)[1][1:], keep_blank_values=True):
                self._query.setdefault(k, v)  # the first value, as Envoy matches
        return self._query.get(name)

    def first_match(self, route: HttpRoute) -> RouteMatch | bool:
        """The first match of ``route`` that holds, True for a route without matches, else False."""
        if not route.matches:
            return True
        for m in route.matches:
            if self.holds(m):
                return m
        return False

    def holds(self, m: RouteMatch) -> bool:
        req = self.req
        if m.port is not None and m.port != req.port:
            return False
        if m.uri is not None and not string_matches(m.uri, self.path, m.ignore_uri_case):
            return False
        if m.method is not None and not string_matches(m.method, req.method):
            return False
        if m.scheme is not None and not string_matches(m.scheme, req.scheme):
            return False
        if m.authority is not None and not string_matches(m.authority, req.authority or self.header("host") or ""):
            return False
        for name, sm in m.headers.items():
            value = self.header(name)
            if value is None or not string_matches(sm, value):
                return False
        for name, sm in m.without_headers.items():
            value = self.header(name)
            if value is not None and string_matches(sm, value):
                return False
        for name, sm in m.query_params.items():
            value = self.query(name)
            if value is None or not string_matches(sm, value):
                return False
        if any(self.labels.get(k) != v for k, v in m.source_labels.items()):
            return False
        return m.source_namespace is None or m.source_namespace == self.namespace
