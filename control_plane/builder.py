"""Registry → one ProxyConfig per proxy.

The outbound part and the clusters are built once per registry version; a Sidecar resource
narrows them per workload (scopes are cached per Sidecar). The inbound policy, the opaque ports
and the workload's namespace and labels (for sourceLabels matches) depend on the proxy's own pod.
Snapshots are cached by that per-proxy part, so thousands of proxies cost one build and one
JSON encoding per distinct combination. DestinationRule policies are resolved here (subset and
port overrides), so each cluster carries one effective policy.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane import authz_selection, istio
from control_plane.api import model
from control_plane.api.model import (
    Cluster,
    Endpoint,
    HttpRoute,
    OutboundPort,
    ProxyConfig,
    WeightedCluster,
)
from control_plane.api.spiffe import spiffe_id
from control_plane.protocols import is_http
from control_plane.registry import Registry
from control_plane.resources import Service, ServicePort, Workload, selector_matches
from control_plane.workload_meta import meta_of


def workload_meta(w: Workload) -> model.WorkloadMeta:
    """Telemetry labels of a pod (sidecar/telemetry.py turns them into Istio's labels)."""
    return meta_of(w.workload_name or w.name, w.namespace, w.labels, w.service_account)

ISTIO_SYSTEM = "istio-system"


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
        self._entry_ports = self._index_entries()
        self._rules = {self._canonical(h): r for h, r in registry.destination_rules.items()}
        self._note_foreign_root()
        self._note_unknown_hosts()
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
        # Only what source matches read goes per proxy, so proxies still share snapshots.
        matches: list[model.RouteMatch | model.TcpMatch] = [
            m for o in self._base.outbound for r in o.routes for m in r.matches]
        matches += [m for o in self._base.outbound for t in o.tcp_routes for m in t.matches]
        self._source_keys = frozenset(k for m in matches for k in m.source_labels)
        self._source_ns = any(m.source_namespace is not None for m in matches)
        self._cache: dict[tuple, Snapshot] = {}
        self._scopes: dict[tuple[str, str], tuple[tuple[OutboundPort, ...], tuple[Cluster, ...]]] = {}

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

    def _policy(self, dr: istio.DestinationRule | None, port: int, subset: str | None) -> istio.PolicyParts:
        return dr.effective(port, subset) if dr is not None else istio.PolicyParts()

    def _cluster(
        self, name: str, host: str, port: int, protocol: str, eps: tuple[Endpoint, ...], parts: istio.PolicyParts,
        dns: tuple[model.DnsTarget, ...] = (),
    ) -> Cluster:
        """One cluster with its effective DestinationRule policy resolved into model fields."""
        if parts.tls_mode == "DISABLE":
            eps = tuple(dataclasses.replace(e, identity=None) for e in eps)  # plaintext hop
            dns = tuple(dataclasses.replace(t, identity=None) for t in dns)
        policy = model.TrafficPolicy(
            load_balancer=parts.load_balancer or model.LoadBalancer(),
            connection_pool=parts.pool.limits if parts.pool else model.ConnectionPool(),
            outlier=parts.outlier,
        )
        timeout = parts.pool.connect_timeout if parts.pool and parts.pool.connect_timeout else 5.0
        return Cluster(name, host, port, protocol, eps, timeout, policy, dns)

    def _clusters(self) -> list[Cluster]:
        clusters: list[Cluster] = []
        for host in sorted(self.registry.services):
            svc = self.registry.services[host]
            dr = self._rules.get(host)
            for sp in svc.ports:
                eps = tuple(self._endpoints(svc, sp))
                clusters.append(self._cluster(model.cluster_name(host, sp.port), host, sp.port, sp.protocol, eps,
                                              self._policy(dr, sp.port, None)))
                for subset in dr.subsets if dr else ():
                    chosen = tuple(e for e in eps if selector_matches(subset.labels, e.labels))
                    clusters.append(self._cluster(
                        model.cluster_name(host, sp.port, subset.name), host, sp.port, sp.protocol, chosen,
                        self._policy(dr, sp.port, subset.name),
                    ))
        for (host, _), (se, sp) in sorted(self._entry_ports.items(), key=lambda kv: kv[0]):
            clusters.extend(self._entry_clusters(se, host, sp))
        return clusters

    # -- ServiceEntry ------------------------------------------------------------------------

    def _index_entries(self) -> dict[tuple[str, int], tuple[istio.ServiceEntry, Any]]:
        """(host, port) → (entry, port) of every ServiceEntry host a Service does not already define."""
        out: dict[tuple[str, int], tuple[istio.ServiceEntry, Any]] = {}
        for se in self.registry.service_entries:
            where = f"ServiceEntry/{se.namespace}/{se.name}"
            for host in se.hosts:
                if host in self.registry.services:
                    self._notes.append(f"{where}: host {host} is a Kubernetes Service; the Service wins")
                    continue
                for sp in se.ports:
                    if (host, sp.number) in out:
                        other = out[(host, sp.number)][0]
                        self._notes.append(f"{where}: {host}:{sp.number} is already defined by "
                                           f"ServiceEntry/{other.namespace}/{other.name}; ignored")
                        continue
                    out[(host, sp.number)] = (se, sp)
        return out

    def _entry_endpoints(self, se: istio.ServiceEntry, sp: Any, labels: Mapping[str, str] | None = None,
                         ) -> tuple[tuple[Endpoint, ...], tuple[model.DnsTarget, ...]]:
        eps: list[Endpoint] = []
        dns: list[model.DnsTarget] = []
        for e in se.endpoints:
            if labels is not None and not selector_matches(labels, e.labels):
                continue
            port = e.ports.get(sp.name) or sp.target_port or sp.number
            if se.resolution == "DNS":
                sa = e.service_account if se.location == "MESH_INTERNAL" else None
                dns.append(model.DnsTarget(e.address, port, max(1, e.weight),
                                           spiffe_id(se.namespace, sa, self.trust_domain) if sa else None))
                continue
            identity = None
            if se.location == "MESH_INTERNAL":
                pod = self._pods_by_ip.get(e.address)
                if e.service_account:
                    identity = spiffe_id(se.namespace, e.service_account, self.trust_domain)
                elif pod is not None and pod.injected:
                    identity = pod.identity(self.trust_domain)
            eps.append(Endpoint(e.address, port, identity, dict(e.labels), max(0, e.weight)))
        if se.resolution == "DNS" and not se.endpoints and labels is None:
            dns = [model.DnsTarget(h, sp.target_port or sp.number) for h in se.hosts if "*" not in h]
        eps.sort(key=lambda e: (e.address, e.port))
        return tuple(eps), tuple(dns)

    def _entry_clusters(self, se: istio.ServiceEntry, host: str, sp: Any) -> list[Cluster]:
        dr = self._rules.get(host)
        out = []
        for subset in (None, *(dr.subsets if dr else ())):
            eps, dns = self._entry_endpoints(se, sp, subset.labels if subset else None)
            parts = self._policy(dr, sp.number, subset.name if subset else None)
            if se.resolution == "NONE":  # connect to the address the app asked for
                parts = dataclasses.replace(parts, load_balancer=model.LoadBalancer(model.LB_PASSTHROUGH))
            out.append(self._cluster(model.cluster_name(host, sp.number, subset.name if subset else None),
                                     host, sp.number, sp.protocol, eps, parts, dns))
        return out

    # -- outbound ports and routes -----------------------------------------------------------

    def _canonical(self, host: str) -> str:
        """A resource's host as the registry names it (resolve_host expands "a.b" as a Service)."""
        if host in self.registry.services or any(h == host for h, _ in self._entry_ports):
            return host
        short = host.removesuffix(".svc.cluster.local")
        if short != host and any(h == short for h, _ in self._entry_ports):
            return short
        return host

    def _virtual_services(self) -> Callable[[str], istio.VirtualService | None]:
        """host → its VirtualService: an exact host wins over a wildcard one ("*", "*.example.com")."""
        exact = {self._canonical(h): vs for h, vs in self.registry.virtual_services.items() if "*" not in h}
        wild = sorted(((h, vs) for h, vs in self.registry.virtual_services.items() if "*" in h),
                      key=lambda hv: -len(hv[0]))  # the most specific pattern first

        def find(host: str) -> istio.VirtualService | None:
            if host in exact:
                return exact[host]
            return next((vs for h, vs in wild if fnmatch.fnmatchcase(host, h)), None)
        return find

    def _outbound(self, cluster_names: set[str]) -> tuple[OutboundPort, ...]:
        out = []
        by_host = self._virtual_services()
        ports: list[tuple[str, tuple[str, ...], int, str]] = []
        for host in sorted(self.registry.services):
            svc = self.registry.services[host]
            if not svc.addresses:
                continue  # headless: no VIP to intercept (pod IPs pass through)
            ports.extend((host, svc.addresses, sp.port, sp.protocol) for sp in svc.ports)
        for (host, number), (se, sp) in sorted(self._entry_ports.items(), key=lambda kv: kv[0]):
            if se.addresses:
                ports.append((host, se.addresses, number, sp.protocol))
        for host, addresses, number, protocol in ports:
            vs = by_host(host)
            routes: tuple[HttpRoute, ...] = ()
            tcp: tuple[model.TcpRoute, ...] = ()
            routed = False
            if vs is not None and is_http(protocol):
                routes, routed = self._routes(vs, host, number, cluster_names), True
            elif vs is not None:
                tcp = self._tcp_routes(vs, host, number, cluster_names)
                if not vs.tcp_routes and vs.routes:
                    self._notes.append(
                        f"VirtualService/{vs.namespace}/{vs.name}: http routes do not apply to "
                        f"{host}:{number} ({protocol}); add tcp routes"
                    )
            out.append(OutboundPort(
                service=host, addresses=addresses, port=number, protocol=protocol,
                default_cluster=model.cluster_name(host, number), routes=routes, routed=routed, tcp_routes=tcp,
            ))
        return tuple(out)

    def _dest_port(self, d: istio.RouteDestination, host: str, port: int) -> int | None:
        if d.port is not None:
            return d.port
        target = self._canonical(d.host)
        if target == host:
            return port
        svc = self.registry.services.get(target)
        if svc is not None and len(svc.ports) == 1:
            return svc.ports[0].port
        entry_ports = [p for h, p in self._entry_ports if h == target]
        return entry_ports[0] if len(entry_ports) == 1 else None

    def _cluster_for(self, d: istio.RouteDestination, host: str, port: int, cluster_names: set[str],
                     where: str, route: str) -> str | None:
        number = self._dest_port(d, host, port)
        name = model.cluster_name(self._canonical(d.host), number, d.subset) if number else None
        if name is None or name not in cluster_names:
            what = f"subset {d.subset!r} of " if d.subset else ""
            self._notes.append(
                f"{where}: route {route} sends to {what}{d.host}:{number or '?'}, which no "
                "Service/ServiceEntry/DestinationRule defines; that destination is left out"
            )
            return None
        return name

    def _weighted(self, dests: tuple[istio.RouteDestination, ...], host: str, port: int, names: set[str],
                  where: str, route: str) -> tuple[WeightedCluster, ...]:
        out = []
        for d in dests:
            name = self._cluster_for(d, host, port, names, where, route)
            if name is not None:
                out.append(WeightedCluster(name, d.weight, d.headers))
        return tuple(out)

    def _routes(self, vs: istio.VirtualService, host: str, port: int, names: set[str]) -> tuple[HttpRoute, ...]:
        where = f"VirtualService/{vs.namespace}/{vs.name}"
        routes = []
        for r in vs.routes:
            route = r.route
            if not r.mesh:
                continue
            if any(m.port is not None and m.port != port for m in route.matches) and all(
                    m.port is not None and m.port != port for m in route.matches):
                continue  # every match names another port
            dests = self._weighted(r.destinations, host, port, names, where, route.name)
            mirror = self._cluster_for(r.mirror, host, port, names, where, route.name) if r.mirror else None
            if r.destinations and (not dests or sum(d.weight for d in dests) <= 0):
                # Every destination is undefined: answered 503 as Envoy does for a missing cluster.
                route = dataclasses.replace(route, direct_response=model.DirectResponse(503, "no healthy upstream"))
                dests = ()
            routes.append(dataclasses.replace(route, destinations=dests, mirror=mirror))
        return tuple(routes)

    def _tcp_routes(self, vs: istio.VirtualService, host: str, port: int, names: set[str]
                    ) -> tuple[model.TcpRoute, ...]:
        where = f"VirtualService/{vs.namespace}/{vs.name}"
        out = []
        for t in vs.tcp_routes:
            if not t.mesh:
                continue
            if t.matches and all(m.port is not None and m.port != port for m in t.matches):
                continue
            dests = self._weighted(t.destinations, host, port, names, where, t.name)
            if dests and sum(d.weight for d in dests) > 0:
                out.append(model.TcpRoute(t.name, dests, t.matches))
        return tuple(out)

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

    def authz_for(self, w: Workload | None, namespace: str) -> tuple[model.AuthzPolicy, ...]:
        return authz_selection.policies_for(self.registry, self.root_namespace, w, namespace)

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

    def _note_foreign_root(self) -> None:
        """Mesh-wide-looking resources in istio-system when that is not the root namespace."""
        if self.root_namespace == ISTIO_SYSTEM:
            return
        found = [("PeerAuthentication", pa.name) for pa in self.registry.peer_authentications
                 if pa.namespace == ISTIO_SYSTEM and pa.selector is None]
        found += [("Sidecar", sc.name) for sc in self.registry.sidecars
                  if sc.namespace == ISTIO_SYSTEM and sc.selector is None]
        for kind, name in found:
            self._notes.append(
                f"{kind}/{ISTIO_SYSTEM}/{name}: {ISTIO_SYSTEM} is not the root namespace "
                f"({self.root_namespace}); this resource is not mesh-wide, it applies to {ISTIO_SYSTEM} only"
            )

    def _note_unknown_hosts(self) -> None:
        """A rule for a host no Service or ServiceEntry defines has no effect: say so."""
        known = set(self.registry.services) | {h for h, _ in self._entry_ports}
        for host, dr in self._rules.items():
            if host not in known:
                self._notes.append(f"DestinationRule/{dr.namespace}/{dr.name}: host {host} matches no Service or "
                                   "ServiceEntry (wildcard hosts are not implemented); no effect")
        for host, vs in self.registry.virtual_services.items():
            if "*" in host:
                if not any(fnmatch.fnmatchcase(k, host) for k in known):
                    self._notes.append(f"VirtualService/{vs.namespace}/{vs.name}: host {host} matches no Service "
                                       "or ServiceEntry; no effect")
            elif self._canonical(host) not in known:
                self._notes.append(f"VirtualService/{vs.namespace}/{vs.name}: host {host} matches no Service or "
                                   "ServiceEntry; no effect")

    def sidecar_for(self, namespace: str, labels: Mapping[str, str] | None) -> istio.Sidecar | None:
        """Istio's choice: a selecting Sidecar in the namespace, else the namespace's, else the root's."""
        selected = ns_level = root = None
        for sc in self.registry.sidecars:
            if sc.namespace == namespace and sc.selector is not None:
                if selected is None and labels is not None and selector_matches(sc.selector, labels):
                    selected = sc
            elif sc.namespace == namespace and ns_level is None:
                ns_level = sc
            elif sc.namespace == self.root_namespace and sc.selector is None and root is None:
                root = sc
        return selected or ns_level or root

    def _host_namespace(self, host: str) -> str:
        svc = self.registry.services.get(host)
        if svc is not None:
            return svc.namespace
        entry = next((se for (h, _), (se, _) in self._entry_ports.items() if h == host), None)
        return entry.namespace if entry else ""

    def _scoped(self, sc: istio.Sidecar | None) -> tuple[tuple[OutboundPort, ...], tuple[Cluster, ...]]:
        """The outbound ports a Sidecar's egress hosts allow, and only the clusters they use."""
        if sc is None:
            return self._base.outbound, self._base.clusters
        key = (sc.namespace, sc.name)
        if key not in self._scopes:
            ports = tuple(o for o in self._base.outbound if sc.allows(self._host_namespace(o.service), o.service))
            used: set[str] = set()
            for o in ports:
                used.add(o.default_cluster)
                for r in o.routes:
                    used.update(d.cluster for d in r.destinations)
                    if r.mirror:
                        used.add(r.mirror)
                for t in o.tcp_routes:
                    used.update(d.cluster for d in t.destinations)
            clusters = tuple(c for c in self._base.clusters
                             if c.name in used or sc.allows(self._host_namespace(c.service), c.service))
            self._scopes[key] = (ports, clusters)
        return self._scopes[key]

    def snapshot_for(self, key: ProxyKey) -> Snapshot:
        w = self.workload(key)
        labels = {k: v for k, v in w.labels.items() if k in self._source_keys} if w else {}
        namespace = key.namespace if self._source_ns else ""
        inbound = self.inbound_for(key.namespace, w.labels if w else None)
        inbound = dataclasses.replace(inbound, authz=self.authz_for(w, key.namespace))
        opaque = self._opaque_for(w)
        sc = self.sidecar_for(key.namespace, w.labels if w else None)
        meta = workload_meta(w) if w else None
        cache_key = (inbound.mtls_mode, tuple(sorted(inbound.port_mtls.items())), opaque,
                     (sc.namespace, sc.name) if sc else None, namespace, tuple(sorted(labels.items())),
                     inbound.authz, meta)
        snap = self._cache.get(cache_key)
        if snap is None:
            outbound, clusters = self._scoped(sc)
            cfg = dataclasses.replace(self._base, inbound=inbound, opaque_ports=opaque, outbound=outbound,
                                      clusters=clusters, workload_namespace=namespace, workload_labels=labels,
                                      workload=meta)
            cfg = dataclasses.replace(cfg, version=cfg.content_hash())
            payload = json.dumps(cfg.to_dict(), separators=(",", ":"))
            snap = self._cache[cache_key] = Snapshot(cfg, payload)
        return snap
