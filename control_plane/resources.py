"""Kubernetes core objects (Namespace, Service, Pod, EndpointSlice) read into small typed records.

Sources hand over plain dicts exactly as ``kubectl get -o json`` shows them; everything here is
pure so the registry can be rebuilt from any set of objects in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.api.annotations import STATUS_ANNOTATION
from control_plane.api.spiffe import spiffe_id
from control_plane.protocols import port_protocol
from control_plane.workload_meta import workload_name

CLUSTER_DOMAIN = "cluster.local"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
OPAQUE_PORTS_ANNOTATION = "remora.dev/opaque-ports"

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for cluster-scoped kinds


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", "")))


def service_hostname(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"


def resolve_host(host: str, namespace: str) -> str:
    """Istio's short-name rule: "reviews" is in the resource's namespace, "reviews.ns" adds .svc."""
    if "." not in host:
        return service_hostname(host, namespace)
    if host.count(".") == 1:
        return f"{host}.svc.{CLUSTER_DOMAIN}"
    return host


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or a container port name resolved per pod
    protocol: str  # model protocol (http, http2, grpc, tcp, tls, opaque)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    addresses: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None  # None: endpoints come from EndpointSlices only

    @property
    def hostname(self) -> str:
        return service_hostname(self.name, self.namespace)


@dataclass(frozen=True)
class Workload:
    """A running pod as the mesh sees it."""

    name: str
    namespace: str
    ip: str | None
    labels: Mapping[str, str]
    service_account: str
    injected: bool  # carries the injector's status annotation: it has a sidecar
    named_ports: Mapping[str, int] = field(default_factory=dict)
    opaque_ports: tuple[int, ...] = ()
    ready: bool = True
    workload_name: str = ""  # the controller's name (telemetry); "" = the pod's name

    def identity(self, trust_domain: str) -> str:
        return spiffe_id(self.namespace, self.service_account, trust_domain)


@dataclass(frozen=True)
class SliceEndpoint:
    address: str
    pod: str | None  # targetRef name when it is a Pod
    ready: bool
    ports: Mapping[str, int]  # port name → port


def _port_list(value: str) -> tuple[int, ...]:
    ports = [p.strip() for p in value.split(",") if p.strip()]
    bad = [p for p in ports if not p.isdigit() or not 1 <= int(p) <= 65535]
    if bad:
        raise ValueError(f"annotation {OPAQUE_PORTS_ANNOTATION}: {bad[0]!r} is not a port number")
    return tuple(int(p) for p in ports)


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def parse_service(obj: Mapping[str, Any]) -> Service:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    addresses = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    addresses = tuple(a for a in addresses if a and a != "None")
    ports = []
    for i, p in enumerate(spec.get("ports") or []):
        if not isinstance(p.get("port"), int):
            raise ValueError(f"spec.ports[{i}].port: expected a number, got {p.get('port')!r}")
        name = p.get("name") or ""
        ports.append(ServicePort(
            name, p["port"], p.get("targetPort", p["port"]),
            port_protocol(name, p.get("appProtocol")),
        ))
    selector = spec.get("selector")
    return Service(meta["name"], meta.get("namespace", "default"), addresses, tuple(ports),
                   dict(selector) if selector else None)


def parse_pod(obj: Mapping[str, Any]) -> Workload:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    named: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") and isinstance(p.get("containerPort"), int):
                named[p["name"]] = p["containerPort"]
    opaque = annotations.get(OPAQUE_PORTS_ANNOTATION)
    phase = status.get("phase", "Running")
    # As EndpointSlices do: a pod whose Ready condition is False (starting, or failing its
    # readiness probe) gets no traffic; no conditions at all (static files) counts as ready.
    unready = any(c.get("type") == "Ready" and c.get("status") == "False"
                  for c in status.get("conditions") or [])
    return Workload(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        ip=status.get("podIP"),
        labels=dict(meta.get("labels") or {}),
        service_account=spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
        injected=STATUS_ANNOTATION in annotations,
        named_ports=named,
        opaque_ports=_port_list(opaque) if opaque else (),
        ready=(phase not in ("Failed", "Succeeded") and not meta.get("deletionTimestamp")
               and not unready),
        workload_name=workload_name(meta),
    )


def parse_endpoint_slice(obj: Mapping[str, Any]) -> tuple[str, str, list[SliceEndpoint]]:
    """(namespace, service name, endpoints) of one EndpointSlice."""
    meta = obj["metadata"]
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        raise ValueError(f"metadata.labels: lacks {SERVICE_NAME_LABEL}")
    ports = {p.get("name") or "": p["port"] for p in obj.get("ports") or [] if "port" in p}
    out = []
    for e in obj.get("endpoints") or []:
        ref = e.get("targetRef") or {}
        ready = (e.get("conditions") or {}).get("ready", True) is not False
        for addr in e.get("addresses") or []:
            out.append(SliceEndpoint(addr, ref.get("name") if ref.get("kind") == "Pod" else None,
                                     ready, ports))
    return meta.get("namespace", "default"), service, out
