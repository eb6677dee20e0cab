"""Mesh-wide injection defaults: one YAML file, or the ``mesh`` key of a ConfigMap.

```yaml
proxyImage: ghcr.io/remora-mesh/remora:<version>   # default: this release (package metadata)
proxyVersion: <version>
controlPlaneAddress: remora-control.remora-system.svc:15012
revision: default            # serves pods/namespaces whose remora.dev/rev selects it
trustDomain: cluster.local
nativeSidecar: true          # false for clusters older than Kubernetes 1.29
dnsCapture: true             # the proxy answers the pod's DNS queries for mesh names
resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: "2", memory: 256Mi}}
proxyLimits: {maxHeadersCount: 100, requestHeadersTimeout: 10}  # sidecar/http/limits.py
```
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from control_plane.api import annotations as ann
from control_plane.api.ports import DEFAULT_TRUST_DOMAIN, DISCOVERY_PORT
from control_plane.api.version import version
from sidecar.http import limits

VERSION = version()  # the default proxyVersion: the injector's own release
CONFIGMAP_KEY = "mesh"


class MeshConfigError(ValueError):
    """The mesh config is not valid; the message says which field and what is accepted."""


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str

    def as_k8s(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


@dataclass(frozen=True)
class MeshConfig:
    proxy_image: str = f"ghcr.io/remora-mesh/remora:{VERSION}"
    proxy_version: str = VERSION
    image_pull_policy: str = "IfNotPresent"
    control_plane_address: str = f"remora-control.remora-system.svc:{DISCOVERY_PORT}"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    native_sidecar: bool = True
    hold_application: bool = True
    rewrite_probes: bool = True
    log_level: str = "info"
    drain_seconds: int | float = 5
    dns_capture: bool = True
    revision: str = "default"  # the remora.dev/rev value this injector serves (ann.DEFAULT_REVISION)
    tracing_endpoint: str = ""  # OTLP/HTTP traces URL; empty: tracing off
    tracing_sampling: float = 1.0  # percent of new traces sampled (annotation trace-sampling)
    access_log: str = "off"  # off, text, json (annotation access-log)
    ipv6: bool | None = None  # None: remora-init decides (its own default)
    proxy_resources: Resources = field(
        default_factory=lambda: Resources("100m", "64Mi", "2", "256Mi"))
    init_resources: Resources = field(
        default_factory=lambda: Resources("10m", "32Mi", "1", "128Mi"))
    # HTTP limits given in proxyLimits ((field, value) pairs); the rest are Envoy's defaults.
    proxy_limits: tuple[tuple[str, int | float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Canonical form (for the template hash and for docs)."""
        d = dataclasses.asdict(self)
        if not self.proxy_limits:  # unset: the hash of every existing config stays the same
            del d["proxy_limits"]
        return d


# YAML key -> (dataclass field, checker returning the value or raising ValueError with "accepted").
FIELDS = {
    "proxyImage": "proxy_image",
    "proxyVersion": "proxy_version",
    "imagePullPolicy": "image_pull_policy",
    "controlPlaneAddress": "control_plane_address",
    "trustDomain": "trust_domain",
    "nativeSidecar": "native_sidecar",
    "holdApplication": "hold_application",
    "rewriteProbes": "rewrite_probes",
    "logLevel": "log_level",
    "drainSeconds": "drain_seconds",
    "revision": "revision",
    "dnsCapture": "dns_capture",
    "ipv6": "ipv6",
    "resources": "proxy_resources",
    "initResources": "init_resources",
    "tracingEndpoint": "tracing_endpoint",
    "tracingSampling": "tracing_sampling",
    "accessLog": "access_log",
    "proxyLimits": "proxy_limits",
}
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")
_REVISION = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise MeshConfigError(f"mesh config {key}: {v!r} is not a boolean; accepted: true or false")
    return v


def _str(key: str, v: Any, pattern: re.Pattern[str] | None, accepted: str) -> str:
    if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
        raise MeshConfigError(f"mesh config {key}: invalid value {v!r}; accepted: {accepted}")
    return v


def _resources(key: str, v: Any, base: Resources) -> Resources:
    if not isinstance(v, dict) or set(v) - {"requests", "limits"}:
        raise MeshConfigError(f"mesh config {key}: accepted: a mapping with requests and limits")
    values = dataclasses.asdict(base)
    for part, suffix in (("requests", ""), ("limits", "_limit")):
        section = v.get(part) or {}
        if not isinstance(section, dict) or set(section) - {"cpu", "memory"}:
            raise MeshConfigError(
                f"mesh config {key}.{part}: accepted: a mapping with cpu and memory")
        for kind, raw in section.items():
            text = str(raw)
            check = ann.BY_KEY[ann.PREFIX + ("proxy-cpu" if kind == "cpu" else "proxy-memory")]
            try:
                check.parse(text)
            except ValueError:
                raise MeshConfigError(
                    f"mesh config {key}.{part}.{kind}: invalid value {raw!r}; accepted: {check.accepted}"
                ) from None
            values[kind + suffix] = text
    res = Resources(**values)
    for kind in ("cpu", "memory"):
        try:
            ann.check_request_within_limit(kind, values[kind], values[kind + "_limit"], "")
        except ValueError:
            raise MeshConfigError(f"mesh config {key}: {kind} request is above its limit") from None
    return res


def from_dict(data: dict[str, Any] | None) -> MeshConfig:
    """Validate a parsed mesh config mapping; unknown keys are errors (typos must not pass)."""
    data = data or {}
    if not isinstance(data, dict):
        raise MeshConfigError("mesh config: accepted: a YAML mapping of settings")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise MeshConfigError(
            f"mesh config: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(FIELDS)}")
    base = MeshConfig()
    values: dict[str, Any] = {}
    for key, v in data.items():
        name = FIELDS[key]
        spec = ann.BY_MESH_KEY.get(key)
        if spec is not None:  # the same domain as the annotation that overrides it per pod
            try:
                values[name] = spec.domain.check_value(v)
            except ValueError as e:
                raise MeshConfigError(f"mesh config {key}: {e}") from None
        elif key == "ipv6":
            values[name] = None if v is None else _bool(key, v)
        elif key == "proxyImage":
            try:
                values[name] = ann.IMAGE.check_value(v)
            except ValueError as e:
                raise MeshConfigError(f"mesh config proxyImage: {e}") from None
        elif key == "controlPlaneAddress":
            values[name] = _str(key, v, _HOSTPORT, "host:port, e.g. remora-control.remora-system.svc:15012")
        elif key == "trustDomain":
            values[name] = _str(key, v, DNS_NAME, "a lower-case DNS name such as cluster.local")
        elif key == "imagePullPolicy":
            values[name] = _str(key, v, re.compile("^(Always|IfNotPresent|Never)$"),
                                "Always, IfNotPresent or Never")
        elif key == "revision":
            values[name] = _str(key, v, _REVISION, "a DNS label such as canary or 0-2 (63 characters at most)")
        elif key == "tracingEndpoint":
            values[name] = _str(key, v, re.compile(r"^$|" + _URL.pattern),
                                "an http(s) URL of an OTLP/HTTP traces endpoint, or empty (off)")
        elif key == "proxyLimits":
            try:
                values[name] = limits.from_mesh(v)
            except limits.LimitsError as e:
                raise MeshConfigError(str(e)) from None
        elif key == "proxyVersion":
            values[name] = _str(key, v, re.compile(r"^\S+$"), "a version string such as 0.1.0")
        else:  # resources, initResources
            values[name] = _resources(key, v, getattr(base, name))
    return dataclasses.replace(base, **values)


def load(path: str | Path | None) -> MeshConfig:
    """Read a mesh config file: a plain mapping, or a ConfigMap whose data key ``mesh`` holds it."""
    if path is None:
        return MeshConfig()
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise MeshConfigError(f"mesh config {path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise MeshConfigError(f"mesh config {path}: not valid YAML: {e}") from None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        text = (doc.get("data") or {}).get(CONFIGMAP_KEY)
        if text is None:
            raise MeshConfigError(f"mesh config {path}: the ConfigMap has no data key {CONFIGMAP_KEY!r}")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MeshConfigError(f"mesh config {path}: data.{CONFIGMAP_KEY} is not valid YAML: {e}") from None
    try:
        return from_dict(doc)
    except MeshConfigError as e:
        raise MeshConfigError(f"{path}: {e}") from None
