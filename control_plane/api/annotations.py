"""Pod labels and annotations that steer sidecar injection, and their parsers.

Pure functions only: the injector, ``remoractl`` and the docs all read this one table.
Every parser raises ``ValueError`` whose message names the annotation, the bad value and
what is accepted, so the webhook can deny the pod with that message as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api import netparse

PREFIX = "remora.dev/"
INJECT_LABEL = PREFIX + "inject"  # on a pod: "true" / "false"; on a namespace: "enabled"
NAMESPACE_INJECT_VALUE = "enabled"
STATUS_ANNOTATION = PREFIX + "status"
# On a namespace or pod: which control plane + injector revision serves it (the pod wins).
REV_LABEL = PREFIX + "rev"
DEFAULT_REVISION = "default"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
MAX_DRAIN_SECONDS = 3600

_CPU = re.compile(r"^(\d+m|\d+(\.\d{1,3})?)$", re.ASCII)
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", re.ASCII)
_MEMORY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
# An image reference: [registry[:port]/]path[:tag][@digest]; no spaces, no scheme.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:\d+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$", re.ASCII
)


class Invalid(ValueError):
    """A value outside its domain; ``str()`` is ``invalid value '...'; accepted: ...``."""

    def __init__(self, value: object, accepted: str) -> None:
        super().__init__(f"invalid value {value!r}; accepted: {accepted}")


def cpu_millis(quantity: str) -> int:
    """A Kubernetes CPU quantity ("100m", "2", "0.5") in millicores."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return round(float(quantity) * 1000)


def memory_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity ("64Mi", "1G", "1000") in bytes."""
    m = re.match(r"^([\d.]+)([A-Za-z]*)$", quantity)
    if m is None or m.group(2) not in _MEMORY_FACTORS:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return float(m.group(1)) * _MEMORY_FACTORS[m.group(2)]


class Domain:
    """The values one setting takes: as annotation text, and as a typed mesh-config value.

    ``parse`` reads the text form (annotations, environment variables, flags); ``check_value``
    the typed form (mesh config YAML, chart values), described for the chart by ``schema``;
    ``text`` turns a typed value into the text the injector hands to the proxy or remora-init.
    """

    accepted: str = ""

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def check_value(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise Invalid(value, self.accepted)
        return self.parse(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def text(self, value: Any) -> str:
        return str(value)


class Choice(Domain):
    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values
        self.accepted = "one of " + ", ".join(values)

    def parse(self, text: str) -> str:
        if text not in self.values:
            raise Invalid(text, self.accepted)
        return text

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}


class Boolean(Domain):
    accepted = '"true" or "false"'

    def parse(self, text: str) -> bool:
        if text not in ("true", "false"):
            raise Invalid(text, self.accepted)
        return text == "true"

    def check_value(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(value, "true or false")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def text(self, value: Any) -> str:
        return "true" if value else "false"


class Seconds(Domain):
    """A non-negative number of seconds up to ``maximum``, such as "5" or "2.5"."""

    _TEXT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.accepted = f"seconds from 0 to {maximum}, such as 5 or 2.5"

    def parse(self, text: str) -> int | float:
        if not self._TEXT.fullmatch(text) or float(text) > self.maximum:
            raise Invalid(text, self.accepted)
        return int(text) if text.isdigit() else float(text)

    def check_value(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value <= self.maximum:
            raise Invalid(value, self.accepted)
        number: int | float = value
        return number

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": 0, "maximum": self.maximum}

    def text(self, value: Any) -> str:
        # Integral floats print as integers, others in plain decimal rounded to microseconds,
        # so parse() takes them.
        return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0").rstrip(".")


class Percent(Domain):
    """A percentage from 0 to 100, such as "1" or "0.5"."""

    accepted = "a percentage from 0 to 100, such as 1 or 0.5"

    def parse(self, text: str) -> float:
        try:
            pct = float(text)
        except ValueError:
            raise Invalid(text, self.accepted) from None
        if not 0 <= pct <= 100:
            raise Invalid(text, self.accepted)
        return pct

    def check_value(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise Invalid(value, self.accepted)
        return float(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": 0, "maximum": 100}

    def text(self, value: Any) -> str:
        return str(int(value)) if float(value).is_integer() else str(value)


class Pattern(Domain):
    def __init__(self, pattern: re.Pattern[str], accepted: str,
                 positive: Callable[[str], float] | None = None) -> None:
        self.pattern = pattern
        self.accepted = accepted
        self.positive = positive

    def parse(self, text: str) -> str:
        if not self.pattern.fullmatch(text) or (self.positive is not None and self.positive(text) <= 0):
            raise Invalid(text, self.accepted)
        return text


class NetList(Domain):
    """Ports or CIDRs, comma-separated; CIDRs travel as text (flags, env); "*" stays "*"."""

    def __init__(self, parse: Callable[[str], Any], accepted: str) -> None:
        self._parse = parse
        self.accepted = accepted

    def parse(self, text: str) -> Any:
        try:
            parsed = self._parse(text)
        except ValueError as e:
            raise ValueError(f"invalid value {text!r}; accepted: {self.accepted} ({e})") from None
        if isinstance(parsed, str):
            return parsed
        return tuple(v if isinstance(v, int) else str(v) for v in parsed)

    def text(self, value: Any) -> str:
        return value if value == "*" else ",".join(str(v) for v in value)


_PORTS = "a comma-separated list of port numbers 1-65535"
_CIDRS = "a comma-separated list of IPv4/IPv6 CIDRs"
CPU = Pattern(_CPU, 'a positive CPU quantity such as "100m", "500m", "1" or "1.5"', cpu_millis)
MEMORY = Pattern(_MEMORY, 'a positive memory quantity such as "64Mi", "1Gi" or "500M"',
                 memory_bytes)
IMAGE = Pattern(_IMAGE, 'an image reference such as "registry.example/remora:0.1.0"')
LOG_LEVEL = Choice(LOG_LEVELS)
BOOLEAN = Boolean()
DRAIN = Seconds(MAX_DRAIN_SECONDS)
PORTS = NetList(netparse.parse_ports, _PORTS)
PERCENT = Percent()
ACCESS_LOG_FORMATS = ("off", "text", "json")
ACCESS_LOG = Choice(ACCESS_LOG_FORMATS)


@dataclass(frozen=True)
class Annotation:
    """One per-pod setting: ``remora.dev/<name>``.

    ``mesh_key``: the mesh-config key (and chart value ``mesh.<key>``) holding its mesh-wide
    default; ``proxy_env``: the proxy's environment variable the injector sets from it;
    ``init_flag``: the remora-init flag it becomes.
    """

    name: str
    default: str  # as the docs show it; the mesh config may change resource/image defaults
    example: str
    accepted: str  # short form, for the README table
    meaning: str
    domain: Domain
    mesh_key: str | None = None
    proxy_env: str | None = None
    init_flag: str | None = None

    @property
    def key(self) -> str:
        return PREFIX + self.name

    def parse(self, value: str) -> Any:
        try:
            return self.domain.parse(value)
        except ValueError as e:
            raise ValueError(f"annotation {self.key}: {e}") from None


def _init(name: str, default: str, example: str, accepted: str, meaning: str,
          domain: Domain) -> Annotation:
    return Annotation(name, default, example, accepted, meaning, domain, init_flag="--" + name)


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("proxy-cpu", "100m (mesh config)", "200m", "CPU quantity",
               "CPU request of the proxy container", CPU),
    Annotation("proxy-cpu-limit", "2 (mesh config)", "1", "CPU quantity",
               "CPU limit of the proxy container", CPU),
    Annotation("proxy-memory", "64Mi (mesh config)", "128Mi", "memory quantity",
               "memory request of the proxy container", MEMORY),
    Annotation("proxy-memory-limit", "256Mi (mesh config)", "512Mi", "memory quantity",
               "memory limit of the proxy container", MEMORY),
    Annotation("proxy-image", "mesh config `proxyImage`", "registry.example/remora:0.1.0",
               "image reference", "image of the proxy and init containers", IMAGE),
    Annotation("log-level", "info (mesh config `logLevel`)", "debug", ", ".join(LOG_LEVELS),
               "proxy log level", LOG_LEVEL, mesh_key="logLevel", proxy_env="REMORA_LOG_LEVEL"),
    _init("include-inbound-ports", "* (all ports)", "8080,9090", "`*` or port list",
          "inbound ports redirected to the proxy",
          NetList(netparse.parse_port_selection, "`*` or " + _PORTS)),
    _init("exclude-inbound-ports", "none (15020, 15021, 15090 always)", "9100",
          "port list", "inbound ports never redirected", PORTS),
    _init("include-outbound-ports", "none", "443", "port list",
          "outbound ports redirected even when their CIDR is excluded", PORTS),
    _init("exclude-outbound-ports", "none", "5432,6379", "port list",
          "outbound ports never redirected", PORTS),
    _init("exclude-outbound-cidrs", "none", "169.254.169.254/32", "CIDR list",
          "destinations never redirected", NetList(netparse.parse_cidrs, _CIDRS)),
    _init("include-outbound-cidrs", "* (all destinations)", "198.18.0.0/15,fd00::/8",
          "`*` or CIDR list", "destinations redirected to the proxy",
          NetList(netparse.parse_cidr_selection, "`*` or " + _CIDRS)),
    Annotation("opaque-ports", "none", "3306,6379", "port list",
               "ports relayed as opaque TCP, with no protocol sniffing", PORTS,
               proxy_env="REMORA_OPAQUE_PORTS"),
    Annotation("native-sidecar", "true (mesh config `nativeSidecar`)", "false", "true, false",
               "proxy as a native sidecar (init container with restartPolicy Always; "
               "Kubernetes 1.29+) instead of the first app container", BOOLEAN,
               mesh_key="nativeSidecar"),
    Annotation("hold-application", "true (mesh config `holdApplication`)", "false", "true, false",
               "without native sidecar: the apps start only once the proxy is ready "
               "(postStart `remora-proxy wait`)", BOOLEAN, mesh_key="holdApplication"),
    Annotation("rewrite-probes", "true (mesh config `rewriteProbes`)", "false", "true, false",
               "rewrite HTTP/TCP/gRPC probes to the proxy's :15020/app-health/", BOOLEAN,
               mesh_key="rewriteProbes"),
    Annotation("drain-seconds", "5 (mesh config `drainSeconds`)", "30", f"0-{MAX_DRAIN_SECONDS}",
               "seconds the proxy drains connections on shutdown", DRAIN,
               mesh_key="drainSeconds", proxy_env="REMORA_DRAIN_SECONDS"),
    Annotation("dns-capture", "true (mesh config `dnsCapture`)", "false", "true, false",
               "send the pod's DNS queries (port 53) to the proxy, which answers mesh names "
               "and forwards the rest (docs/dns.md)", BOOLEAN, mesh_key="dnsCapture",
               proxy_env="REMORA_DNS_CAPTURE", init_flag="--dns-capture"),
    Annotation("merge-metrics", "true", "false", "true, false",
               "merge the app's own Prometheus metrics (its `prometheus.io/*` annotations) into "
               "the proxy's :15090/stats/prometheus, as Istio's metrics merging", BOOLEAN),
    Annotation("trace-sampling", "1 (mesh config `tracingSampling`)", "10", "0-100",
               "percent of new traces the proxy samples (tracing is on when the mesh config "
               "sets `tracingEndpoint`)", PERCENT, mesh_key="tracingSampling",
               proxy_env="REMORA_TRACE_SAMPLING"),
    Annotation("access-log", "off (mesh config `accessLog`)", "json", ", ".join(ACCESS_LOG_FORMATS),
               "proxy access log on stdout: Envoy's text format or JSON lines", ACCESS_LOG,
               mesh_key="accessLog", proxy_env="REMORA_ACCESS_LOG"),
)

BY_KEY: dict[str, Annotation] = {a.key: a for a in ANNOTATIONS}
BY_NAME: dict[str, Annotation] = {a.name: a for a in ANNOTATIONS}
BY_MESH_KEY: dict[str, Annotation] = {a.mesh_key: a for a in ANNOTATIONS if a.mesh_key}
# Keys under the prefix that are not settings (written by Remora itself).
RESERVED = frozenset({STATUS_ANNOTATION})


def parse_annotations(annotations: Mapping[str, str] | None) -> dict[str, Any]:
    """Parse every ``remora.dev/`` setting present: {short name: value}. Raises ValueError."""
    parsed: dict[str, Any] = {}
    for key, value in (annotations or {}).items():
        spec = BY_KEY.get(key)
        if spec is not None:
            parsed[spec.name] = spec.parse(str(value))
    return parsed


def check_request_within_limit(kind: str, request: str, limit: str, culprit: str) -> None:
    """Raise ValueError naming ``culprit`` when the request is above the limit."""
    measure = cpu_millis if kind == "cpu" else memory_bytes
    if measure(request) > measure(limit):
        raise ValueError(
            f"annotation {PREFIX}{culprit}: {kind} request {request!r} is above the limit "
            f"{limit!r}; accepted: a request no larger than the limit"
        )


def unknown_annotations(annotations: Mapping[str, str] | None) -> list[str]:
    """``remora.dev/`` keys that are neither a setting nor reserved (likely typos)."""
    return sorted(
        k for k in (annotations or {}) if k.startswith(PREFIX) and k not in BY_KEY
        and k not in RESERVED
    )


def parse_inject_label(value: str | None) -> bool | None:
    """The pod label ``remora.dev/inject``: True, False, or None when absent."""
    if value is None:
        return None
    if value not in ("true", "false"):
        raise ValueError(
            f"label {INJECT_LABEL}: invalid value {value!r}; accepted: \"true\" or \"false\""
        )
    return value == "true"
