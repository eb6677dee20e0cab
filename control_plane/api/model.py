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


# DestinationRule load balancers (PASSTHROUGH: connect to the address the app asked for).
LB_ROUND_ROBIN, LB_LEAST_REQUEST, LB_RANDOM, LB_PASSTHROUGH = "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH"
LB_POLICIES = (LB_ROUND_ROBIN, LB_LEAST_REQUEST, LB_RANDOM, LB_PASSTHROUGH)


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """One hash key source (exactly one set) and the ring size."""

    header: str | None = None
    cookie: str | None = None
    cookie_path: str | None = None
    cookie_ttl: float | None = None  # set: the proxy generates the cookie when it is absent
    use_source_ip: bool = False
    query_param: str | None = None
    minimum_ring_size: int = 1024


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    simple: str = LB_LEAST_REQUEST  # Istio's default when unspecified
    consistent_hash: ConsistentHash | None = None  # set: wins over simple


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Limits per upstream cluster; None: unlimited. Overflow is answered 503 with flag UO."""

    max_connections: int | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int | None = 5  # None: off
    consecutive_gateway_errors: int | None = None
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 10.0
    min_health_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """The effective DestinationRule policy of one cluster (subset and port overrides applied).

    TLS mode is not here: DISABLE clears the endpoints' identities (plaintext hop) and
    ISTIO_MUTUAL keeps them, so the proxy has one fact to follow.
    """

    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)
    connection_pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier: OutlierDetection | None = None


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """A ServiceEntry endpoint the proxy resolves itself (resolution DNS)."""

    hostname: str
    port: int
    weight: int = 1
    # SPIFFE ID every resolved address must present (MESH_INTERNAL with a serviceAccount);
    # None: plaintext hop (MESH_EXTERNAL, or no identity knowable before resolution).
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream group: one service port, optionally narrowed to a DestinationRule subset."""

    name: str  # "<hostname>|<port>" or "<hostname>|<port>|<subset>"
    service: str  # service hostname, e.g. reviews.default.svc.cluster.local
    port: int
    protocol: str = TCP
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout: float = 5.0  # DestinationRule connectionPool.tcp.connectTimeout
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    dns: tuple[DnsTarget, ...] = ()  # resolution DNS: resolved by the proxy, endpoints empty


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: at most one of exact/prefix/regex; none set means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None  # RE2 syntax, whole-value match (control_plane/api/re2.py)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Istio's HTTPMatchRequest: all given conditions must hold (see sidecar/routing.py)."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)  # lower-case names
    without_headers: Mapping[str, StringMatch] = field(default_factory=dict)
    query_params: Mapping[str, StringMatch] = field(default_factory=dict)
    ignore_uri_case: bool = False
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None


# retryOn conditions (Envoy's names) the proxy implements; numbers go to RetryPolicy.status_codes.
RETRY_ON_HTTP = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
                 "retriable-status-codes")
RETRY_ON_GRPC = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
# gRPC status names (Istio's fault.abort.grpcStatus) → codes.
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

# Istio's default retry policy (applied when a route says nothing about retries).
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """HTTPRetry resolved: numeric retryOn entries are moved to ``status_codes`` as Istio does."""

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    status_codes: tuple[int, ...] = (503,)


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """set replaces, add appends, remove deletes (names lower-case)."""

    set: Mapping[str, str] = field(default_factory=dict)
    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    request: HeaderOps | None = None
    response: HeaderOps | None = None


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    cluster: str
    weight: int = 100
    headers: HeaderPolicy | None = None  # destination-level header operations


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str | None = None
    authority: str | None = None
    scheme: str | None = None
    port: int | None = None
    code: int = 301


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    match: str  # RE2
    rewrite: str  # \1-style group references


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str | None = None  # replaces the part the uri prefix/exact match matched
    authority: str | None = None
    uri_regex: RegexRewrite | None = None


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed_delay: float
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    http_status: int | None = None
    grpc_status: int | None = None  # numeric gRPC code
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool | None = None
    unmatched_preflights_forward: bool = True  # Istio's default: FORWARD


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One VirtualService HTTP route: if any match holds, split over the destinations."""

    name: str
    destinations: tuple[WeightedCluster, ...] = ()  # empty only with redirect or direct_response
    matches: tuple[RouteMatch, ...] = ()  # empty: matches every request
    timeout: float | None = None
    retries: RetryPolicy | None = None  # None: Istio's default policy (RetryPolicy())
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    fault: Fault | None = None
    mirror: str | None = None  # cluster name
    mirror_percent: float = 100.0
    headers: HeaderPolicy | None = None
    cors: CorsPolicy | None = None


@dataclass(frozen=True, slots=True)
class TcpMatch:
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None


@dataclass(frozen=True, slots=True)
class TcpRoute:
    name: str
    destinations: tuple[WeightedCluster, ...]
    matches: tuple[TcpMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboundPort:
    """What the proxy does with an app connection to one service address and port."""

    service: str  # hostname
    addresses: tuple[str, ...]  # the service's VIPs
    port: int
    protocol: str
    default_cluster: str  # the whole service port; used when no VirtualService routes this port
    routes: tuple[HttpRoute, ...] = ()
    # True: a VirtualService routes this port, so a request no route matches gets 404 (NR).
    routed: bool = False
    tcp_routes: tuple[TcpRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """How the inbound listener treats connections (PeerAuthentication)."""

    mtls_mode: str = PERMISSIVE
    port_mtls: Mapping[int, str] = field(default_factory=dict)  # per app port overrides
    authz: tuple[AuthzPolicy, ...] = ()  # AuthorizationPolicies selecting this workload

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
    # The proxy's own workload, for sourceLabels / sourceNamespace matches: only the label keys
    # some match reads, and the namespace only when some match reads it (snapshots stay shared).
    workload_namespace: str = ""
    workload_labels: Mapping[str, str] = field(default_factory=dict)
    # Telemetry: this proxy's own workload, and every known pod IP's workload (names the
    # client of an inbound connection without a per-request metadata exchange).
    workload: WorkloadMeta | None = None
    peers: Mapping[str, WorkloadMeta] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_jsonable(self)
        return out

    def content_hash(self) -> str:
        """A version derived from content, so equal configs get equal versions."""
        body = to_jsonable(dataclasses.replace(self, version=""))
        blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any, ignored: list[str] | None = None) -> ProxyConfig:
        """Decode and validate; raises ConfigError naming the first bad field.

        With ``ignored`` (a list), fields this model does not know are skipped and their paths
        appended to it (a newer control plane's additions); without it they are errors."""
        config: ProxyConfig = decode(cls, data, "config", ignored)
        validate(config)
        return config


T = TypeVar("T")


def decode(tp: Any, value: Any, path: str, ignored: list[str] | None = None) -> Any:
    """Decode JSON-shaped ``value`` into type ``tp`` (dataclasses, tuples, mappings).

    Types are always checked strictly. An object field the dataclass does not have is an error,
    unless ``ignored`` is a list: then it is skipped and its path (``config.clusters[0].x``)
    appended, so a proxy can take a snapshot from a control plane one version newer."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(str(k) for k in set(value) - names)
        if unknown and ignored is None:
            raise ConfigError(f"{path}: unknown field {unknown[0]!r}")
        if ignored is not None:
            ignored.extend(f"{path}.{k}" for k in unknown)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = decode(hints[f.name], value[f.name], f"{path}.{f.name}", ignored)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}.{f.name}: required")
        return typing.cast(Any, tp)(**kwargs)  # tp is a dataclass type (is_dataclass above)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, path, ignored)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (inner, _) = typing.get_args(tp)
        return tuple(decode(inner, v, f"{path}[{i}]", ignored) for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        kt, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            key = _decode_key(kt, k, path)
            out[key] = decode(vt, v, f"{path}[{k!r}]", ignored)
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
        _validate_policy(c.policy, f"{p}.policy")
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
            _validate_http_route(r, rp, names)
            if not r.destinations and (r.redirect or r.direct_response):
                continue
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
        for j, t in enumerate(o.tcp_routes):
            tp = f"{p}.tcp_routes[{j}]"
            for k, d in enumerate(t.destinations):
                if d.cluster not in names:
                    raise ConfigError(f"{tp}.destinations[{k}].cluster: no cluster named {d.cluster!r}")
            if sum(max(0, d.weight) for d in t.destinations) <= 0:
                raise ConfigError(f"{tp}.destinations: weights add up to 0")
    modes = [config.inbound.mtls_mode, *config.inbound.port_mtls.values()]
    for m in modes:
        if m not in MTLS_MODES:
            raise ConfigError(f"config.inbound: mTLS mode {m!r} is not one of {', '.join(MTLS_MODES)}")
    for port in config.inbound.port_mtls:
        _check_port(port, "config.inbound.port_mtls")
    for i, port in enumerate(config.opaque_ports):
        _check_port(port, f"config.opaque_ports[{i}]")
    for i, pol in enumerate(config.inbound.authz):
        validate_authz(pol, f"config.inbound.authz[{i}]")


def _regex(pattern: str | None, path: str) -> None:
    from control_plane.api.re2 import Re2Error, compile_re2  # the proxy's engine, the same text

    if pattern is not None:
        try:
            compile_re2(pattern)
        except Re2Error as exc:
            raise ConfigError(f"{path}: {pattern!r} is not a valid RE2 regex: {exc}") from None


def _string_match(m: StringMatch | None, path: str) -> None:
    if m is None:
        return
    if sum(v is not None for v in (m.exact, m.prefix, m.regex)) > 1:
        raise ConfigError(f"{path}: set at most one of exact, prefix, regex")
    _regex(m.regex, f"{path}.regex")


def _percent(value: float, path: str) -> None:
    if not 0 <= value <= 100:
        raise ConfigError(f"{path}: {value} is outside 0-100")


def _validate_http_route(r: HttpRoute, rp: str, names: set[str]) -> None:
    for k, m in enumerate(r.matches):
        mp = f"{rp}.matches[{k}]"
        for attr in ("uri", "scheme", "method", "authority"):
            _string_match(getattr(m, attr), f"{mp}.{attr}")
        for attr in ("headers", "without_headers", "query_params"):
            for name, sm in getattr(m, attr).items():
                _string_match(sm, f"{mp}.{attr}[{name!r}]")
        if m.port is not None:
            _check_port(m.port, f"{mp}.port")
    if r.redirect is not None and r.redirect.code not in (301, 302, 303, 307, 308):
        raise ConfigError(f"{rp}.redirect.code: {r.redirect.code} is not one of 301, 302, 303, 307, 308")
    if r.direct_response is not None and not 200 <= r.direct_response.status <= 599:
        raise ConfigError(f"{rp}.direct_response.status: {r.direct_response.status} is outside 200-599")
    if r.rewrite is not None and r.rewrite.uri_regex is not None:
        _regex(r.rewrite.uri_regex.match, f"{rp}.rewrite.uri_regex.match")
    if r.retries is not None:
        if r.retries.attempts < 0:
            raise ConfigError(f"{rp}.retries.attempts: must not be negative")
        if r.retries.per_try_timeout is not None and r.retries.per_try_timeout <= 0:
            raise ConfigError(f"{rp}.retries.per_try_timeout: must be positive")
    if r.fault is not None:
        if r.fault.delay is not None:
            _percent(r.fault.delay.percent, f"{rp}.fault.delay.percent")
            if r.fault.delay.fixed_delay < 0:
                raise ConfigError(f"{rp}.fault.delay.fixed_delay: must not be negative")
        if r.fault.abort is not None:
            a = r.fault.abort
            _percent(a.percent, f"{rp}.fault.abort.percent")
            if (a.http_status is None) == (a.grpc_status is None):
                raise ConfigError(f"{rp}.fault.abort: set exactly one of http_status, grpc_status")
            if a.http_status is not None and not 200 <= a.http_status <= 599:
                raise ConfigError(f"{rp}.fault.abort.http_status: {a.http_status} is outside 200-599")
            if a.grpc_status is not None and not 0 <= a.grpc_status <= 16:
                raise ConfigError(f"{rp}.fault.abort.grpc_status: {a.grpc_status} is outside 0-16")
    if r.mirror is not None and r.mirror not in names:
        raise ConfigError(f"{rp}.mirror: no cluster named {r.mirror!r}")
    _percent(r.mirror_percent, f"{rp}.mirror_percent")
    if r.cors is not None:
        for k, o in enumerate(r.cors.allow_origins):
            _string_match(o, f"{rp}.cors.allow_origins[{k}]")


def _validate_policy(policy: TrafficPolicy, path: str) -> None:
    lb = policy.load_balancer
    if lb.simple not in LB_POLICIES:
        raise ConfigError(f"{path}.load_balancer.simple: {lb.simple!r} is not one of {', '.join(LB_POLICIES)}")
    ch = lb.consistent_hash
    if ch is not None:
        keys = sum(v is not None for v in (ch.header, ch.cookie, ch.query_param)) + ch.use_source_ip
        if keys != 1:
            raise ConfigError(f"{path}.load_balancer.consistent_hash: set exactly one hash key")
        if ch.minimum_ring_size < 1:
            raise ConfigError(f"{path}.load_balancer.consistent_hash.minimum_ring_size: must be positive")
    for f in dataclasses.fields(ConnectionPool):
        v = getattr(policy.connection_pool, f.name)
        if v is not None and v <= 0:
            raise ConfigError(f"{path}.connection_pool.{f.name}: must be positive")
    od = policy.outlier
    if od is not None:
        for name in ("interval", "base_ejection_time"):
            if getattr(od, name) <= 0:
                raise ConfigError(f"{path}.outlier.{name}: must be positive")
        _percent(od.max_ejection_percent, f"{path}.outlier.max_ejection_percent")
        _percent(od.min_health_percent, f"{path}.outlier.min_health_percent")


def cluster_name(hostname: str, port: int, subset: str | None = None) -> str:
    return f"{hostname}|{port}|{subset}" if subset else f"{hostname}|{port}"


# -- AuthorizationPolicy (security.istio.io), as one proxy's inbound side evaluates it --------

ALLOW = "ALLOW"
DENY = "DENY"
AUDIT = "AUDIT"
CUSTOM = "CUSTOM"  # no external authorizer: what its rules match is denied (fail closed)
AUTHZ_ACTIONS = (ALLOW, DENY, AUDIT, CUSTOM)
# `when` keys the proxy evaluates; request.headers[<name>] is the one keyed family.
AUTHZ_CONDITION_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal",
                        "destination.ip", "destination.port", "connection.sni")


@dataclass(frozen=True, slots=True)
class AuthzSource:
    """One `from[].source`: every present field must match (values within a field are ORed)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzOperation:
    """One `to[].operation`; hosts, methods and paths are HTTP-only."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """One `when` entry: key, and values (any matches) and/or notValues (none matches)."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """from AND to AND when; an empty rule matches every request."""

    sources: tuple[AuthzSource, ...] = ()
    operations: tuple[AuthzOperation, ...] = ()
    conditions: tuple[AuthzCondition, ...] = ()
    # The rule names something Remora cannot evaluate (requestPrincipals, request.auth.*): an
    # ALLOW rule never matches, a DENY rule applies without it (fail closed, as Istio on TCP).
    unevaluable: bool = False


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """One AuthorizationPolicy that applies to this proxy's workload."""

    name: str  # "<namespace>/<name>", the label in logs and metrics
    action: str = ALLOW
    rules: tuple[AuthzRule, ...] = ()  # ALLOW with no rules matches nothing (spec: {} = deny all)
    dry_run: bool = False  # istio.io/dry-run: evaluated, logged and counted, never enforced


def _check_cidr(value: str, path: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"{path}: {value!r} is not an IP address or CIDR") from None


def validate_authz(pol: AuthzPolicy, p: str) -> None:
    """What the decoder cannot check in one policy: enum, ports, CIDRs, condition keys."""
    if pol.action not in AUTHZ_ACTIONS:
        raise ConfigError(f"{p}.action: {pol.action!r} is not one of {', '.join(AUTHZ_ACTIONS)}")
    for i, rule in enumerate(pol.rules):
        rp = f"{p}.rules[{i}]"
        for j, src in enumerate(rule.sources):
            for fname in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
                for k, v in enumerate(getattr(src, fname)):
                    _check_cidr(v, f"{rp}.sources[{j}].{fname}[{k}]")
        for j, op in enumerate(rule.operations):
            for fname in ("ports", "not_ports"):
                for k, port in enumerate(getattr(op, fname)):
                    _check_port(port, f"{rp}.operations[{j}].{fname}[{k}]")
        for j, c in enumerate(rule.conditions):
            cp = f"{rp}.conditions[{j}]"
            if c.key not in AUTHZ_CONDITION_KEYS and not authz_header_name(c.key):
                raise ConfigError(f"{cp}.key: {c.key!r} is not a supported condition key")
            if not c.values and not c.not_values:
                raise ConfigError(f"{cp}: values or not_values is needed")
            for k, v in enumerate((*c.values, *c.not_values)):
                if c.key in ("source.ip", "remote.ip", "destination.ip"):
                    _check_cidr(v, f"{cp}.values[{k}]")
                elif c.key == "destination.port" and not (v.isdigit() and 1 <= int(v) <= 65535):
                    raise ConfigError(f"{cp}.values[{k}]: {v!r} is not a port")


def authz_header_name(key: str) -> str | None:
    """The header name of a `request.headers[<name>]` key, lower-cased; None otherwise."""
    if key.startswith("request.headers[") and key.endswith("]") and len(key) > 17:
        return key[16:-1].lower()
    return None
