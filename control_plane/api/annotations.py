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
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
MAX_DRAIN_SECONDS = 3600

_CPU = re.compile(r"^(\d+m|\d+(\.\d{1,3})?)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MEMORY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
# An image reference: [registry[:port]/]path[:tag][@digest]; no spaces, no scheme.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:\d+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)


def _fail(name: str, value: str, accepted: str) -> ValueError:
    return ValueError(f"annotation {PREFIX}{name}: invalid value {value!r}; accepted: {accepted}")


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


def _parse_cpu(name: str, value: str) -> str:
    if not _CPU.match(value) or cpu_millis(value) <= 0:
        raise _fail(name, value, 'a positive CPU quantity such as "100m", "500m", "1" or "1.5"')
    return value


def _parse_memory(name: str, value: str) -> str:
    if not _MEMORY.match(value) or memory_bytes(value) <= 0:
        raise _fail(name, value, 'a positive memory quantity such as "64Mi", "1Gi" or "500M"')
    return value


def _parse_image(name: str, value: str) -> str:
    if not _IMAGE.match(value):
        raise _fail(name, value, 'an image reference such as "registry.example/remora:0.1.0"')
    return value


def _parse_log_level(name: str, value: str) -> str:
    if value not in LOG_LEVELS:
        raise _fail(name, value, "one of " + ", ".join(LOG_LEVELS))
    return value


def _parse_bool(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise _fail(name, value, '"true" or "false"')
    return value == "true"


def _parse_drain(name: str, value: str) -> int:
    if not value.isdigit() or int(value) > MAX_DRAIN_SECONDS:
        raise _fail(name, value, f"whole seconds from 0 to {MAX_DRAIN_SECONDS}")
    return int(value)


def _parse_percent(name: str, value: str) -> float:
    try:
        pct = float(value)
    except ValueError:
        pct = -1.0
    if not 0 <= pct <= 100:
        raise _fail(name, value, "a percentage from 0 to 100, e.g. 1 or 0.5")
    return pct


ACCESS_LOG_FORMATS = ("off", "text", "json")


def _parse_access_log(name: str, value: str) -> str:
    if value not in ACCESS_LOG_FORMATS:
        raise _fail(name, value, "one of " + ", ".join(ACCESS_LOG_FORMATS))
    return value


def _list_parser(parse: Callable[[str], Any], accepted: str) -> Callable[[str, str], Any]:
    def parser(name: str, value: str) -> Any:
        try:
            parsed = parse(value)
        except ValueError as e:
            raise _fail(name, value, f"{accepted} ({e})") from None
        # CIDRs travel as text (flags, env); "*" stays "*".
        return parsed if isinstance(parsed, str) else tuple(v if isinstance(v, int) else str(v) for v in parsed)

    return parser


_PORTS = "a comma-separated list of port numbers 1-65535"
_CIDRS = "a comma-separated list of IPv4/IPv6 CIDRs"


@dataclass(frozen=True)
class Annotation:
    """One per-pod setting: ``remora.dev/<name>``."""

    name: str
    default: str  # as the docs show it; the mesh config may change resource/image defaults
    example: str
    accepted: str
    meaning: str
    parser: Callable[[str, str], Any]

    @property
    def key(self) -> str:
        return PREFIX + self.name

    def parse(self, value: str) -> Any:
        return self.parser(self.name, value)


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("proxy-cpu", "100m (mesh config)", "200m", "CPU quantity",
               "CPU request of the proxy container", _parse_cpu),
    Annotation("proxy-cpu-limit", "2 (mesh config)", "1", "CPU quantity",
               "CPU limit of the proxy container", _parse_cpu),
    Annotation("proxy-memory", "64Mi (mesh config)", "128Mi", "memory quantity",
               "memory request of the proxy container", _parse_memory),
    Annotation("proxy-memory-limit", "256Mi (mesh config)", "512Mi", "memory quantity",
               "memory limit of the proxy container", _parse_memory),
    Annotation("proxy-image", "mesh config `proxyImage`", "registry.example/remora:0.1.0",
               "image reference", "image of the proxy and init containers", _parse_image),
    Annotation("log-level", "info (mesh config `logLevel`)", "debug", ", ".join(LOG_LEVELS),
               "proxy log level", _parse_log_level),
    Annotation("include-inbound-ports", "* (all ports)", "8080,9090", "`*` or port list",
               "inbound ports redirected to the proxy",
               _list_parser(netparse.parse_port_selection, "`*` or " + _PORTS)),
    Annotation("exclude-inbound-ports", "none (15020, 15021, 15090 always)", "9100",
               "port list", "inbound ports never redirected",
               _list_parser(netparse.parse_ports, _PORTS)),
    Annotation("include-outbound-ports", "none", "443", "port list",
               "outbound ports redirected even when their CIDR is excluded",
               _list_parser(netparse.parse_ports, _PORTS)),
    Annotation("exclude-outbound-ports", "none", "5432,6379", "port list",
               "outbound ports never redirected", _list_parser(netparse.parse_ports, _PORTS)),
    Annotation("exclude-outbound-cidrs", "none", "169.254.169.254/32", "CIDR list",
               "destinations never redirected", _list_parser(netparse.parse_cidrs, _CIDRS)),
    Annotation("include-outbound-cidrs", "* (all destinations)", "198.18.0.0/15,fd00::/8",
               "`*` or CIDR list", "destinations redirected to the proxy",
               _list_parser(netparse.parse_cidr_selection, "`*` or " + _CIDRS)),
    Annotation("opaque-ports", "none", "3306,6379", "port list",
               "ports relayed as opaque TCP, with no protocol sniffing",
               _list_parser(netparse.parse_ports, _PORTS)),
    Annotation("native-sidecar", "true (mesh config `nativeSidecar`)", "false", "true, false",
               "proxy as a native sidecar (init container with restartPolicy Always; "
               "Kubernetes 1.29+) instead of the first app container", _parse_bool),
    Annotation("hold-application", "true (mesh config `holdApplication`)", "false", "true, false",
               "without native sidecar: the apps start only once the proxy is ready "
               "(postStart `remora-proxy wait`)", _parse_bool),
    Annotation("rewrite-probes", "true (mesh config `rewriteProbes`)", "false", "true, false",
               "rewrite HTTP/TCP/gRPC probes to the proxy's :15020/app-health/", _parse_bool),
    Annotation("drain-seconds", "5 (mesh config `drainSeconds`)", "30", f"0-{MAX_DRAIN_SECONDS}",
               "seconds the proxy drains connections on shutdown", _parse_drain),
    Annotation("merge-metrics", "true", "false", "true, false",
               "merge the app's own Prometheus metrics (its `prometheus.io/*` annotations) into "
               "the proxy's :15090/stats/prometheus, as Istio's metrics merging", _parse_bool),
    Annotation("trace-sampling", "1 (mesh config `tracingSampling`)", "10", "0-100",
               "percent of new traces the proxy samples (tracing is on when the mesh config "
               "sets `tracingEndpoint`)", _parse_percent),
    Annotation("access-log", "off (mesh config `accessLog`)", "json", ", ".join(ACCESS_LOG_FORMATS),
               "proxy access log on stdout: Envoy's text format or JSON lines", _parse_access_log),
)

BY_KEY: dict[str, Annotation] = {a.key: a for a in ANNOTATIONS}
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
