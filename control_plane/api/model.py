"""The mesh model one proxy holds: what the control plane sends and what a bootstrap file holds.

A snapshot (``ProxyConfig``) is self-contained: outbound ports (service VIP:port → routes),
clusters (an upstream group: one service port, optionally one subset, with its endpoints),
and the inbound policy. It is plain frozen dataclasses with a strict JSON decoder, so that a
bad snapshot is rejected with the path of the bad field (the proxy NACKs with that text) and
the proxy never imports anything heavier than the standard library for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

# Protocols of a service port (Kubernetes appProtocol / Istio port-name prefixes).
HTTP = "http"  # HTTP/1.1 (and HTTP/2 when the client speaks it)
HTTP2 = "http2"
GRPC = "grpc"
TCP = "tcp"  # opaque bytes, sniffing allowed
TLS = "tls"  # app-originated TLS, relayed opaque
OPAQUE = "opaque"  # opaque bytes, never sniffed (server-first protocols)
PROTOCOLS = (HTTP, HTTP2, GRPC, TCP, TLS, OPAQUE)

# Inbound mTLS modes (PeerAuthentication).
STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
MTLS_MODES = (STRICT, PERMISSIVE, DISABLE)


class ConfigError(ValueError):
    """A snapshot or bootstrap is invalid; the message names the field path and the problem."""


@dataclass(frozen=True, slots=True)
class WorkloadMeta:
    """Who runs behind an address, for telemetry labels (Istio's source_*/destination_*)."""

    name: str  # the workload (Deployment, StatefulSet, ...) name, else the pod name
    namespace: str
    app: str = "unknown"  # labels app.kubernetes.io/name or app
    version: str = "unknown"  # labels app.kubernetes.io/version or version
    service_account: str = "default"
    cluster: str = "Kubernetes"  # Istio's default cluster id


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend: a pod IP and target port, and the identity its proxy must present."""

    address: str
    port: int
    # SPIFFE ID of the endpoint's sidecar; None means no sidecar: the hop is plaintext.
    identity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    workload: WorkloadMeta | None = None  # telemetry: destination_workload, _app, _version


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream group: one service port, optionally narrowed to a DestinationRule subset."""

    name: str  # "<hostname>|<port>" or "<hostname>|<port>|<subset>"
    service: str  # service hostname, e.g. reviews.default.svc.cluster.local
    port: int
    protocol: str = TCP
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    cluster: str
    weight: int = 100


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All given conditions must hold. Header values match exactly."""

    path_exact: str | None = None
    path_prefix: str | None = None
    method: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 0
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "503")


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One VirtualService HTTP route: if any match holds, split over the destinations."""

    name: str
    destinations: tuple[WeightedCluster, ...]
    matches: tuple[RouteMatch, ...] = ()  # empty: matches every request
    timeout: float | None = None
    retries: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class OutboundPort:
    """What the proxy does with an app connection to one service address and port."""

    service: str  # hostname
    addresses: tuple[str, ...]  # the service's VIPs
    port: int
    protocol: str
    default_cluster: str  # the whole service port; used for TCP and when no route matches
    routes: tuple[HttpRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """How the inbound listener treats connections (PeerAuthentication)."""

    mtls_mode: str = PERMISSIVE
    port_mtls: Mapping[int, str] = field(default_factory=dict)  # per app port overrides

    def mode_for(self, port: int) -> str:
        return self.port_mtls.get(port, self.mtls_mode)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """One proxy's complete configuration at one version."""

    version: str = ""
    outbound: tuple[OutboundPort, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    inbound: InboundPolicy = field(default_factory=InboundPolicy)
    opaque_ports: tuple[int, ...] = ()  # never sniffed, relayed as bytes (server-first protocols)
    trust_bundle: str = ""  # PEM roots for verifying peers; empty: keep the bootstrap roots
    # Fields of the source resources that Remora does not implement, as "kind/ns/name: field".
    unsupported: tuple[str, ...] = ()
    # Telemetry: this proxy's own workload, and every known pod IP's workload (names the
    # client of an inbound connection without a per-request metadata exchange).
    workload: WorkloadMeta | None = None
    peers: Mapping[str, WorkloadMeta] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def content_hash(self) -> str:
        """A version derived from content, so equal configs get equal versions."""
        body = to_jsonable(dataclasses.replace(self, version=""))
        blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any) -> ProxyConfig:
        """Decode and validate; raises ConfigError naming the first bad field."""
        config = decode(cls, data, "config")
        validate(config)
        return config


T = TypeVar("T")


def decode(tp: Any, value: Any, path: str) -> Any:
    """Strictly decode JSON-shaped ``value`` into type ``tp`` (dataclasses, tuples, mappings)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown field {unknown[0]!r}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = decode(hints[f.name], value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}.{f.name}: required")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (inner, _) = typing.get_args(tp)
        return tuple(decode(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            key = _decode_key(kt, k, path)
            out[key] = decode(vt, v, f"{path}[{k!r}]")
        return out
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{path}: cannot decode type {tp!r}")  # a model bug, not user input


def _decode_key(kt: Any, key: Any, path: str) -> Any:
    if kt is int:
        try:
            return int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: key {key!r} is not a number") from None
    if not isinstance(key, str):
        raise ConfigError(f"{path}: key {key!r} is not a string")
    return key


def to_jsonable(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, int mapping keys → strings."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def _check_port(port: int, path: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: port {port} is outside 1-65535")


def _check_address(addr: str, path: str) -> None:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ConfigError(f"{path}: {addr!r} is not an IP address") from None


def validate(config: ProxyConfig) -> None:
    """Semantic checks the decoder cannot make: ranges, references, enums."""
    names = set()
    for i, c in enumerate(config.clusters):
        p = f"config.clusters[{i}]"
        if c.name in names:
            raise ConfigError(f"{p}.name: duplicate cluster {c.name!r}")
        names.add(c.name)
        _check_port(c.port, f"{p}.port")
        if c.protocol not in PROTOCOLS:
            raise ConfigError(f"{p}.protocol: {c.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if c.connect_timeout <= 0:
            raise ConfigError(f"{p}.connect_timeout: must be positive")
        for j, e in enumerate(c.endpoints):
            _check_address(e.address, f"{p}.endpoints[{j}].address")
            _check_port(e.port, f"{p}.endpoints[{j}].port")
            if e.weight < 0:
                raise ConfigError(f"{p}.endpoints[{j}].weight: must not be negative")
            if e.identity is not None and not e.identity.startswith("spiffe://"):
                raise ConfigError(f"{p}.endpoints[{j}].identity: {e.identity!r} is not a SPIFFE ID")
    seen_ports = set()
    for i, o in enumerate(config.outbound):
        p = f"config.outbound[{i}]"
        _check_port(o.port, f"{p}.port")
        if o.protocol not in PROTOCOLS:
            raise ConfigError(f"{p}.protocol: {o.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        for j, a in enumerate(o.addresses):
            _check_address(a, f"{p}.addresses[{j}]")
            if (a, o.port) in seen_ports:
                raise ConfigError(f"{p}: {a}:{o.port} is claimed by two services")
            seen_ports.add((a, o.port))
        if o.default_cluster not in names:
            raise ConfigError(f"{p}.default_cluster: no cluster named {o.default_cluster!r}")
        for j, r in enumerate(o.routes):
            rp = f"{p}.routes[{j}]"
            if not r.destinations:
                raise ConfigError(f"{rp}.destinations: at least one destination is needed")
            for k, d in enumerate(r.destinations):
                if d.cluster not in names:
                    raise ConfigError(f"{rp}.destinations[{k}].cluster: no cluster named {d.cluster!r}")
                if d.weight < 0:
                    raise ConfigError(f"{rp}.destinations[{k}].weight: must not be negative")
            if sum(d.weight for d in r.destinations) <= 0:
                raise ConfigError(f"{rp}.destinations: weights add up to 0")
            if r.timeout is not None and r.timeout <= 0:
                raise ConfigError(f"{rp}.timeout: must be positive")
    modes = [config.inbound.mtls_mode, *config.inbound.port_mtls.values()]
    for m in modes:
        if m not in MTLS_MODES:
            raise ConfigError(f"config.inbound: mTLS mode {m!r} is not one of {', '.join(MTLS_MODES)}")
    for port in config.inbound.port_mtls:
        _check_port(port, "config.inbound.port_mtls")
    for i, port in enumerate(config.opaque_ports):
        _check_port(port, f"config.opaque_ports[{i}]")


def cluster_name(hostname: str, port: int, subset: str | None = None) -> str:
    return f"{hostname}|{port}|{subset}" if subset else f"{hostname}|{port}"
