"""Istio's connection-level metric labels, rendered once per connection or endpoint.

A *label key* is the Prometheus label text of every label that does not change per request
(reporter, source_*, destination_*, request_protocol, connection_security_policy). The stats
module adds response_code, grpc_response_status and response_flags per request. Keys come from
the control plane's workload metadata: an endpoint carries its workload (outbound), and the
snapshot's ``peers`` table names the pod behind a client address (inbound), so no metadata
travels with requests. Every value comes from the configuration, never from a request, so the
number of series is bounded by the mesh's size.
"""

from __future__ import annotations

from typing import Any

from control_plane.api.model import Endpoint, ProxyConfig, WorkloadMeta

# Istio's label names, in the order Istio's proxies print them.
LABELS = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
    "request_protocol", "connection_security_policy",
)
PER_REQUEST_LABELS = ("response_code", "grpc_response_status", "response_flags")
UNKNOWN = "unknown"
SOURCE, DESTINATION = "source", "destination"
HTTP, GRPC, TCP = "http", "grpc", "tcp"  # request_protocol values
_CACHE_MAX = 4096  # label keys kept; the cache is rebuilt from scratch beyond that


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_esc(v)}"' for n, v in zip(LABELS, values, strict=True))


def _workload(meta: WorkloadMeta | None) -> tuple[str, str, str, str, str]:
    if meta is None:
        return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    return (meta.name, meta.namespace, meta.app, meta.version, meta.cluster)


def _service(host: str) -> tuple[str, str, str]:
    """destination_service, _name, _namespace from a hostname like name.ns.svc.cluster.local."""
    if not host:
        return (UNKNOWN, UNKNOWN, UNKNOWN)
    parts = host.split(".")
    return (host, parts[0], parts[1] if len(parts) > 2 else UNKNOWN)


class Labeler:
    """Label keys for this proxy's current configuration; ``update`` on every config or cert."""

    def __init__(self) -> None:
        self.own: WorkloadMeta | None = None
        self.identity: str | None = None
        self.peers: dict[str, WorkloadMeta] = {}
        self.inbound_services: dict[tuple[str, int], str] = {}  # (pod address, port) -> host
        self._cache: dict[tuple[Any, ...], str] = {}
        # Bumped by every update: a key a relay kept (per connection) is current while equal.
        self.generation = 0

    def update(self, cfg: ProxyConfig | None = None, identity: str | None = None) -> None:
        if cfg is not None:
            self.own = cfg.workload
            self.peers = dict(cfg.peers)
            self.inbound_services = {}
            for c in cfg.clusters:  # the services whose endpoints are this pod's ports
                for e in c.endpoints:
                    if cfg.workload is not None and e.workload == cfg.workload:
                        self.inbound_services.setdefault((e.address, e.port), c.service)
        if identity is not None:
            self.identity = identity
        self._cache = {}
        self.generation += 1

    def _store(self, ck: tuple[Any, ...], values: tuple[str, ...]) -> str:
        if len(self._cache) >= _CACHE_MAX:
            self._cache = {}
        key = self._cache[ck] = render(values)
        return key

    def outbound(self, service: str, endpoint: Endpoint | None, protocol: str) -> str:
        """reporter=source: this proxy's workload calling ``endpoint`` of ``service``.
        Called per request: a hit is one tuple and one dict lookup."""
        ck = (SOURCE, service, endpoint.address if endpoint else "",
              endpoint.port if endpoint else 0, protocol)
        key = self._cache.get(ck)
        if key is not None:
            return key
        sw = _workload(self.own)
        dw = _workload(endpoint.workload if endpoint else None)
        return self._store(ck, (
            SOURCE, sw[0], sw[1], self.identity or UNKNOWN, sw[2], sw[3], sw[4],
            dw[0], dw[1], (endpoint.identity if endpoint else None) or UNKNOWN,
            dw[2], dw[3], *_service(service), dw[4], protocol, UNKNOWN))

    def inbound(self, source_address: str | None, dst: tuple[str, int],
                peer_identity: str | None, protocol: str) -> str:
        """reporter=destination: a client at ``source_address`` calling this pod at ``dst``."""
        src = (source_address or "").removeprefix("::ffff:")
        ck = (DESTINATION, src, dst, peer_identity, protocol)
        key = self._cache.get(ck)
        if key is not None:
            return key
        sw = _workload(self.peers.get(src))
        dw = _workload(self.own)
        host = self.inbound_services.get((dst[0].removeprefix("::ffff:"), dst[1]), "")
        return self._store(ck, (
            DESTINATION, sw[0], sw[1], peer_identity or UNKNOWN, sw[2], sw[3], sw[4],
            dw[0], dw[1], self.identity or UNKNOWN, dw[2], dw[3], *_service(host),
            dw[4], protocol, "mutual_tls" if peer_identity else "none"))
