"""The registry: every mesh object the sources know, typed and indexed, rebuilt on each change.

Building it is a pure function of the objects (``Registry.from_objects``), so a source only
keeps the raw objects and the snapshot builder only reads typed records. An invalid object is
reported in ``errors`` and, when the previous registry accepted a version of it (``last_good``),
that version stays in force, as it would in Istio where validation rejects the update;
implemented-but-partial resources and kinds Remora does not implement add ``unsupported`` notes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane import authz, istio, resources
from control_plane.resources import Service, SliceEndpoint, Workload

log = logging.getLogger("remora.control.registry")

# The kinds the control plane reads; others in a manifest directory are ignored.
KINDS = (
    "Namespace", "ServiceAccount", "Service", "Pod", "EndpointSlice",
    "VirtualService", "DestinationRule", "ServiceEntry", "Sidecar", "PeerAuthentication", "AuthorizationPolicy",
    *istio.REPORTED_KINDS,
)


@dataclass
class Registry:
    services: dict[str, Service] = field(default_factory=dict)  # by hostname
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)  # (ns, name)
    slices: dict[tuple[str, str], list[SliceEndpoint]] = field(default_factory=dict)  # (ns, svc)
    destination_rules: dict[str, istio.DestinationRule] = field(default_factory=dict)  # by host
    virtual_services: dict[str, istio.VirtualService] = field(default_factory=dict)  # by host
    peer_authentications: list[istio.PeerAuthentication] = field(default_factory=list)
    service_entries: list[istio.ServiceEntry] = field(default_factory=list)
    sidecars: list[istio.Sidecar] = field(default_factory=list)
    # The objects that parsed, by key: the next build's ``last_good``.
    accepted: dict[resources.Key, Mapping[str, Any]] = field(default_factory=dict)
    authorization_policies: list[authz.AuthorizationPolicy] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_objects(
        cls, objects: Iterable[Mapping[str, Any]], last_good: Mapping[resources.Key, Mapping[str, Any]] | None = None,
    ) -> Registry:
        reg = cls()
        # Sorted by (kind, namespace, name): "the first one wins" is then stable across reloads.
        for obj in sorted(objects, key=resources.key_of):
            key = resources.key_of(obj)
            kind, ns, name = key
            try:
                reg._add(kind, obj)
                reg.accepted[key] = obj
                continue
            except (KeyError, TypeError, ValueError) as exc:
                detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            previous = (last_good or {}).get(key)
            if previous is not None and previous is not obj:
                reg._add(kind, previous)  # it parsed before, so it parses again
                reg.accepted[key] = previous
                reg.errors.append(f"{kind}/{ns or '-'}/{name}: invalid, keeping the last good version: {detail}")
            else:
                reg.errors.append(f"{kind}/{ns or '-'}/{name}: invalid, ignored: {detail}")
        reg.unsupported.sort()
        return reg

    def _add(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "Service":
            svc = resources.parse_service(obj)
            self.services[svc.hostname] = svc
        elif kind == "Pod":
            w = resources.parse_pod(obj)
            self.workloads[(w.namespace, w.name)] = w
        elif kind == "EndpointSlice":
            ns, svc_name, eps = resources.parse_endpoint_slice(obj)
            self.slices.setdefault((ns, svc_name), []).extend(eps)
        elif kind == "VirtualService":
            vs, notes = istio.parse_virtual_service(obj)
            self.unsupported.extend(notes)
            if not vs.mesh:
                self.unsupported.append(f"VirtualService/{vs.namespace}/{vs.name}: bound only to gateways, "
                                        "so no sidecar applies it (no effect)")
                return
            for host in vs.hosts:
                if host in self.virtual_services:
                    other = self.virtual_services[host]
                    self.unsupported.append(
                        f"VirtualService/{vs.namespace}/{vs.name}: host {host} is already routed by "
                        f"VirtualService/{other.namespace}/{other.name}; merging is not implemented, ignored"
                    )
                else:
                    self.virtual_services[host] = vs
        elif kind == "DestinationRule":
            dr, notes = istio.parse_destination_rule(obj)
            self.unsupported.extend(notes)
            if dr.host in self.destination_rules:
                self.unsupported.append(
                    f"DestinationRule/{dr.namespace}/{dr.name}: host {dr.host} already has a "
                    "DestinationRule; merging is not implemented, ignored"
                )
            else:
                self.destination_rules[dr.host] = dr
        elif kind == "PeerAuthentication":
            pa, notes = istio.parse_peer_authentication(obj)
            self.unsupported.extend(notes)
            self.peer_authentications.append(pa)
        elif kind == "ServiceEntry":
            se, notes = istio.parse_service_entry(obj)
            self.unsupported.extend(notes)
            self.service_entries.append(se)
        elif kind == "Sidecar":
            sc, notes = istio.parse_sidecar(obj)
            self.unsupported.extend(notes)
            self.sidecars.append(sc)
        elif kind in istio.REPORTED_KINDS:
            meta = obj["metadata"]
            self.unsupported.append(
                f"{kind}/{meta.get('namespace', 'default')}/{meta['name']}: {kind} is not implemented (no effect)"
            )
        elif kind == "AuthorizationPolicy":
            ap, notes = authz.parse_authorization_policy(obj)
            self.unsupported.extend(notes)
            self.authorization_policies.append(ap)

    def pod_by_ip(self) -> dict[str, Workload]:
        return {w.ip: w for w in self.workloads.values() if w.ip}
