"""Registry → one ProxyConfig per proxy.

Every proxy gets every service (Sidecar-resource scoping comes later), so the outbound part
and the clusters are built once per registry version and shared; only the inbound policy and
the opaque ports depend on the proxy's own pod. Snapshots are cached by that per-proxy part,
so thousands of proxies cost one build and one JSON encoding per distinct policy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

from control_plane import istio
from control_plane.api import model
from control_plane.api.model import (
    Cluster,
    Endpoint,
    HttpRoute,
    OutboundPort,
    ProxyConfig,
    WeightedCluster,
)
from control_plane.protocols import is_http
from control_plane.registry import Registry
from control_plane.resources import Service, ServicePort, Workload, selector_matches
from control_plane.workload_meta import meta_of


def workload_meta(w: Workload) -> model.WorkloadMeta:
    """Telemetry labels of a pod (sidecar/telemetry.py turns them into Istio's labels)."""
    return meta_of(w.workload_name or w.name, w.namespace, w.labels, w.service_account)


@dataclass(frozen=True)
class ProxyKey:
    """What the control plane knows of a proxy when building its snapshot."""

    namespace: str
    pod: str


@dataclass(frozen=True)
class Snapshot:
    config: ProxyConfig
    payload: str  # the JSON of config.to_dict(), encoded once and sent to every proxy sharing it


class SnapshotBuilder:
    def __init__(
        self,
        registry: Registry,
        trust_domain: str,
        trust_bundle: str,
        root_namespace: str = "remora-system",
        mesh_mtls_mode: str = model.PERMISSIVE,
    ) -> None:
        self.registry = registry
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.mesh_mtls_mode = mesh_mtls_mode
        self._pods_by_ip = registry.pod_by_ip()
        self._notes: list[str] = list(registry.unsupported)
        clusters = self._clusters()
        self._base = ProxyConfig(
            outbound=self._outbound({c.name for c in clusters}),
            clusters=tuple(clusters),
            trust_bundle=trust_bundle,
            opaque_ports=tuple(sorted({
                p.port for s in registry.services.values() for p in s.ports if p.protocol == model.OPAQUE
            })),
            peers={w.ip: workload_meta(w) for w in registry.workloads.values() if w.ip},
        )
        self._base = dataclasses.replace(self._base, unsupported=tuple(sorted(set(self._notes))))
        self._cache: dict[tuple, Snapshot] = {}

    @property
    def notes(self) -> tuple[str, ...]:
        return self._base.unsupported

    # -- endpoints and clusters -------------------------------------------------------------

    def _endpoint(self, w: Workload | None, address: str, port: int) -> Endpoint:
        if w is None:
            return Endpoint(address=address, port=port)
        return Endpoint(
            address=address, port=port,
            identity=w.identity(self.trust_domain) if w.injected else None,
            labels=dict(w.labels), workload=workload_meta(w),
        )

    def _endpoints(self, svc: Service, sp: ServicePort) -> list[Endpoint]:
        reg = self.registry
        out: list[Endpoint] = []
        slices = reg.slices.get((svc.namespace, svc.name))
        if slices is not None:
            for e in slices:
                if not e.ready or sp.name not in e.ports:
                    continue
                w = reg.workloads.get((svc.namespace, e.pod)) if e.pod else self._pods_by_ip.get(e.address)
                out.append(self._endpoint(w, e.address, e.ports[sp.name]))
        elif svc.selector:
            for w in reg.workloads.values():
                if w.namespace != svc.namespace or not w.ip or not w.ready:
                    continue
                if not selector_matches(svc.selector, w.labels):
                    continue
                port = sp.target_port if isinstance(sp.target_port, int) else w.named_ports.get(sp.target_port)
                if port is None and isinstance(sp.target_port, str) and sp.target_port.isdigit():
                    port = int(sp.target_port)
                if port is not None:
                    out.append(self._endpoint(w, w.ip, port))
        out.sort(key=lambda e: (e.address, e.port))
        return out

    def _clusters(self) -> list[Cluster]:
        clusters: list[Cluster] = []
        for host in sorted(self.registry.services):
            svc = self.registry.services[host]
            dr = self.registry.destination_rules.get(host)
            for sp in svc.ports:
                eps = self._endpoints(svc, sp)
                clusters.append(Cluster(model.cluster_name(host, sp.port), host, sp.port, sp.protocol, tuple(eps)))
                for subset in dr.subsets if dr else ():
                    chosen = tuple(e for e in eps if selector_matches(subset.labels, e.labels))
                    clusters.append(Cluster(
                        model.cluster_name(host, sp.port, subset.name), host, sp.port, sp.protocol, chosen,
                    ))
        return clusters

    # -- outbound ports and routes -----------------------------------------------------------

    def _outbound(self, cluster_names: set[str]) -> tuple[OutboundPort, ...]:
        out = []
        for host in sorted(self.registry.services):
            svc = self.registry.services[host]
            if not svc.addresses:
                continue  # headless: no VIP to intercept (pod IPs pass through)
            vs = self.registry.virtual_services.get(host)
            for sp in svc.ports:
                routes: tuple[HttpRoute, ...] = ()
                if vs is not None and is_http(sp.protocol):
                    routes = self._routes(vs, svc, sp, cluster_names)
                elif vs is not None:
                    self._notes.append(
                        f"VirtualService/{vs.namespace}/{vs.name}: http routes do not apply to "
                        f"{host}:{sp.port} ({sp.protocol}); tcp/tls routes are not implemented yet"
                    )
                out.append(OutboundPort(
                    service=host, addresses=svc.addresses, port=sp.port, protocol=sp.protocol,
                    default_cluster=model.cluster_name(host, sp.port), routes=routes,
                ))
        return tuple(out)

    def _dest_port(self, d: istio.RouteDestination, svc: Service, sp: ServicePort) -> int | None:
        if d.port is not None:
            return d.port
        if d.host == svc.hostname:
            return sp.port
        target = self.registry.services.get(d.host)
        if target is not None and len(target.ports) == 1:
            return target.ports[0].port
        return None

    def _routes(
        self, vs: istio.VirtualService, svc: Service, sp: ServicePort, cluster_names: set[str]
    ) -> tuple[HttpRoute, ...]:
        where = f"VirtualService/{vs.namespace}/{vs.name}"
        routes = []
        for r in vs.routes:
            dests = []
            for d in r.destinations:
                port = self._dest_port(d, svc, sp)
                name = model.cluster_name(d.host, port, d.subset) if port else None
                if name is None or name not in cluster_names:
                    what = f"subset {d.subset!r} of " if d.subset else ""
                    self._notes.append(
                        f"{where}: route {r.name} sends to {what}{d.host}:{port or '?'}, which no "
                        "Service/DestinationRule defines; that destination is left out"
                    )
                    continue
                dests.append(WeightedCluster(name, d.weight))
            if dests and sum(d.weight for d in dests) > 0:
                routes.append(HttpRoute(
                    name=r.name, destinations=tuple(dests), matches=r.matches,
                    timeout=r.timeout, retries=r.retries,
                ))
        return tuple(routes)

    # -- per proxy ---------------------------------------------------------------------------

    def workload(self, key: ProxyKey) -> Workload | None:
        return self.registry.workloads.get((key.namespace, key.pod))

    def inbound_for(self, namespace: str, labels: Mapping[str, str] | None) -> model.InboundPolicy:
        """Workload level beats namespace level beats mesh level (root namespace) beats the default."""
        mesh = ns_level = workload = None
        for pa in self.registry.peer_authentications:
            if pa.selector is None and pa.namespace == self.root_namespace and mesh is None:
                mesh = pa
            elif pa.selector is None and pa.namespace == namespace and ns_level is None:
                ns_level = pa
            elif (pa.selector is not None and pa.namespace == namespace and workload is None
                  and labels is not None and selector_matches(pa.selector, labels)):
                workload = pa
        mode = self.mesh_mtls_mode
        for level in (mesh, ns_level, workload):
            if level is not None and level.mode is not None:
                mode = level.mode
        ports = dict(workload.port_modes) if workload else {}
        return model.InboundPolicy(mtls_mode=mode, port_mtls=ports)

    def _opaque_for(self, w: Workload | None) -> tuple[int, ...]:
        ports = set(self._base.opaque_ports)
        if w is not None:
            ports.update(w.opaque_ports)
            for svc in self.registry.services.values():
                if svc.namespace != w.namespace or not svc.selector:
                    continue
                if not selector_matches(svc.selector, w.labels):
                    continue
                for sp in svc.ports:
                    if sp.protocol == model.OPAQUE:
                        tp = sp.target_port
                        ports.add(tp if isinstance(tp, int) else w.named_ports.get(tp, sp.port))
        return tuple(sorted(ports))

    def snapshot_for(self, key: ProxyKey) -> Snapshot:
        w = self.workload(key)
        inbound = self.inbound_for(key.namespace, w.labels if w else None)
        opaque = self._opaque_for(w)
        meta = workload_meta(w) if w else None
        cache_key = (inbound.mtls_mode, tuple(sorted(inbound.port_mtls.items())), opaque, meta)
        snap = self._cache.get(cache_key)
        if snap is None:
            cfg = dataclasses.replace(self._base, inbound=inbound, opaque_ports=opaque,
                                      workload=meta)
            cfg = dataclasses.replace(cfg, version=cfg.content_hash())
            payload = json.dumps(cfg.to_dict(), separators=(",", ":"))
            snap = self._cache[cache_key] = Snapshot(cfg, payload)
        return snap
