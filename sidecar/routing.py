"""Routing: service VIP:port → OutboundPort; HTTP request → route → cluster → endpoint.

A ``Router`` is built once per configuration version and is immutable apart from the
round-robin cursors; ``ProxyRuntime.apply_config`` swaps in a new one atomically, so a
request always sees one consistent version.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.api.model import Cluster, Endpoint, HttpRoute, OutboundPort, ProxyConfig

NO_HEALTHY_UPSTREAM = "no healthy upstream"
MAX_WEIGHT_SLOTS = 1000  # bound the expanded round-robin list of a cluster


@dataclass(slots=True)
class RouteDecision:
    """Where one request goes, or why it cannot go anywhere (``status`` set)."""

    cluster: Cluster | None = None
    endpoint: Endpoint | None = None
    timeout: float | None = None
    route: str = ""
    status: int = 0  # 0: routed; else the HTTP status to answer with
    message: str = ""


class _Balancer:
    """Weighted round robin over a cluster's endpoints (an expanded, interleaved ring)."""

    __slots__ = ("ring", "cursor")

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        weights = [max(0, e.weight) for e in endpoints]
        total = sum(weights)
        scale = min(1.0, MAX_WEIGHT_SLOTS / total) if total else 0
        counts = [max(1, round(w * scale)) if w else 0 for w in weights]
        ring: list[Endpoint] = []
        # Interleave: take one slot from each endpoint with slots left, round after round.
        while any(counts):
            for i, e in enumerate(endpoints):
                if counts[i]:
                    ring.append(e)
                    counts[i] -= 1
        self.ring = ring
        self.cursor = random.randrange(len(ring)) if ring else 0

    def pick(self) -> Endpoint | None:
        ring = self.ring
        if not ring:
            return None
        self.cursor = (self.cursor + 1) % len(ring)
        return ring[self.cursor]


class Router:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.clusters = {c.name: c for c in config.clusters}
        self.balancers = {c.name: _Balancer(c.endpoints) for c in config.clusters}
        self.ports: dict[tuple[str, int], OutboundPort] = {}
        for o in config.outbound:
            for a in o.addresses:
                self.ports[(a, o.port)] = o
        self.opaque_ports = frozenset(config.opaque_ports)
        # Ports whose every request gets the same endpoint (no match, one destination, one
        # endpoint): a connection may reuse its first decision while this router is current.
        self.fixed_ports = frozenset(id(o) for o in config.outbound if self._is_fixed(o))

    def _is_fixed(self, port: OutboundPort) -> bool:
        if port.routes:
            route = port.routes[0]
            if route.matches or len(route.destinations) != 1:
                return False
            name = route.destinations[0].cluster
        else:
            name = port.default_cluster
        balancer = self.balancers.get(name)
        return balancer is not None and len({id(e) for e in balancer.ring}) == 1

    def is_fixed(self, port: OutboundPort | None) -> bool:
        """True when ``resolve`` gives every request on ``port`` the same decision."""
        return id(port) in self.fixed_ports

    def lookup(self, address: str, port: int) -> OutboundPort | None:
        """The service port an app connection to ``address:port`` is for (None: passthrough)."""
        return self.ports.get((address, port))

    def pick(self, cluster_name: str, route: str = "", timeout: float | None = None) -> RouteDecision:
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            return RouteDecision(route=route, status=503, message=NO_HEALTHY_UPSTREAM)
        endpoint = self.balancers[cluster_name].pick()
        if endpoint is None:
            return RouteDecision(cluster, route=route, status=503, message=NO_HEALTHY_UPSTREAM)
        return RouteDecision(cluster, endpoint, timeout, route)

    def resolve(
        self,
        outbound_port: OutboundPort | None,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> RouteDecision:
        """The route decision for one HTTP request on ``outbound_port``."""
        if outbound_port is None:
            return RouteDecision(status=404, message="no route: unknown service")
        for route in outbound_port.routes:
            if _route_matches(route, method, path, headers):
                return self.pick(_weighted(route), route.name, route.timeout)
        return self.pick(outbound_port.default_cluster, "default")


def _weighted(route: HttpRoute) -> str:
    dests = route.destinations
    if len(dests) == 1:
        return dests[0].cluster
    x = random.random() * sum(d.weight for d in dests)
    for d in dests:
        x -= d.weight
        if x < 0:
            return d.cluster
    return dests[-1].cluster


def _route_matches(route: HttpRoute, method: bytes, path: bytes,
                   headers: list[tuple[bytes, bytes]]) -> bool:
    if not route.matches:
        return True
    p = path.split(b"?", 1)[0].decode("latin-1")
    m = method.decode("latin-1")
    for match in route.matches:
        if match.path_exact is not None and p != match.path_exact:
            continue
        if match.path_prefix is not None and not p.startswith(match.path_prefix):
            continue
        if match.method is not None and m != match.method:
            continue
        if match.headers and not _headers_match(match.headers, headers):
            continue
        return True
    return False


def _headers_match(wanted: Mapping[str, str], headers: list[tuple[bytes, bytes]]) -> bool:
    have: dict[str, str] = {}
    for k, v in headers:
        have.setdefault(k.lower().decode("latin-1"), v.decode("latin-1"))
    return all(have.get(k.lower()) == v for k, v in wanted.items())
