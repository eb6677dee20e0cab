"""Proxy settings from the environment (set by the injector) and command-line flags.

Flags override environment variables; bad values fail with one line naming the variable or
flag and what is expected.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.api import annotations as ann
from control_plane.api import ports
from control_plane.api.model import ConfigError, ProxyConfig

from .http import limits as http_limits
from .metrics_merge import parse_url

if TYPE_CHECKING:
    import argparse  # only for flags: a proxy started without any does not load it


class SettingsError(ValueError):
    pass


@dataclass
class Settings:
    pod_name: str = ""
    pod_namespace: str = "default"
    pod_ip: str = ""
    service_account: str = "default"
    control_plane: str = ""
    trust_domain: str = ports.DEFAULT_TRUST_DOMAIN
    token_file: str = ""
    trust_root: str = ""
    workdir: str = ""
    log_level: str = "info"
    drain_seconds: float = 5.0
    opaque_ports: tuple[int, ...] = ()
    dns_capture: bool = True  # serve DNS on dns_port (remora-init sends the pod's port 53 there)
    resolv_conf: str = "/etc/resolv.conf"  # the pod's resolvers, where unknown names go
    dns_refresh_rate: float = 5.0  # seconds between lookups of ServiceEntry DNS names (Envoy's default)
    app_probes: str = ""
    app_metrics: str = ""  # the app's metrics URL to merge into :15090 (see metrics_merge.py)
    trace_endpoint: str = ""  # OTLP/HTTP traces URL; empty: tracing off (docs/telemetry.md)
    trace_sampling: float = 1.0  # percent of new traces sampled (Istio's default: 1%)
    access_log: str = "off"  # off, text (Envoy's default format) or json
    bootstrap: str = ""
    detect_timeout: float = 0.1
    admin_port: int = ports.ADMIN_PORT
    outbound_port: int = ports.OUTBOUND_PORT
    inbound_port: int = ports.INBOUND_PORT
    agent_port: int = ports.AGENT_PORT
    health_port: int = ports.HEALTH_PORT
    metrics_port: int = ports.METRICS_PORT
    dns_port: int = ports.DNS_PORT
    extra: dict[str, Any] = field(default_factory=dict)

    def own_ports(self) -> frozenset[int]:
        return frozenset((self.admin_port, self.outbound_port, self.inbound_port,
                          self.agent_port, self.health_port, self.metrics_port, self.dns_port))


_ENV = {
    "POD_NAME": "pod_name", "POD_NAMESPACE": "pod_namespace", "POD_IP": "pod_ip",
    "SERVICE_ACCOUNT": "service_account", "REMORA_CONTROL_PLANE": "control_plane",
    "REMORA_TRUST_DOMAIN": "trust_domain", "REMORA_TOKEN_FILE": "token_file",
    "REMORA_TRUST_ROOT": "trust_root", "REMORA_WORKDIR": "workdir",
    "REMORA_LOG_LEVEL": "log_level", "REMORA_DRAIN_SECONDS": "drain_seconds",
    "REMORA_OPAQUE_PORTS": "opaque_ports", "REMORA_APP_PROBES": "app_probes",
    "REMORA_BOOTSTRAP": "bootstrap", "REMORA_DETECT_TIMEOUT": "detect_timeout",
    "REMORA_RESOLV_CONF": "resolv_conf",
    "REMORA_APP_METRICS": "app_metrics", "REMORA_TRACE_ENDPOINT": "trace_endpoint",
    "REMORA_TRACE_SAMPLING": "trace_sampling", "REMORA_ACCESS_LOG": "access_log",
    "REMORA_DNS_REFRESH_RATE": "dns_refresh_rate",
}
# Settings that a pod annotation sets (through the injector): parsed with the annotation's own
# domain, so whatever the webhook accepts the proxy accepts, and nothing else.
_FROM_ANNOTATION = {a.proxy_env: a for a in ann.ANNOTATIONS if a.proxy_env}
_ENV.update({env: a.name.replace("-", "_") for env, a in _FROM_ANNOTATION.items()})
_BY_ATTR = {a.name.replace("-", "_"): a for a in _FROM_ANNOTATION.values()}
LOG_LEVELS = ann.LOG_LEVELS
TRACE = 5  # below DEBUG: Python logging has no trace level of its own
logging.addLevelName(TRACE, "TRACE")


def python_log_level(name: str) -> int:
    """The logging level of one of LOG_LEVELS."""
    return TRACE if name == "trace" else int(logging.getLevelName(name.upper()))


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="static config+certificate file (env REMORA_BOOTSTRAP)")
    p.add_argument("--log-level", help="|".join(LOG_LEVELS) + " (env REMORA_LOG_LEVEL)")
    p.add_argument("--drain-seconds", help="SIGTERM drain deadline (env REMORA_DRAIN_SECONDS)")
    p.add_argument("--control-plane", help="host:port of remora-control (env REMORA_CONTROL_PLANE)")
    p.add_argument("--workdir", help="writable dir for key/cert files (env REMORA_WORKDIR)")
    p.add_argument("--dns-capture", help="true|false: serve DNS on the DNS port "
                   "(env REMORA_DNS_CAPTURE)")
    for name in ("admin", "outbound", "inbound", "agent", "health", "metrics", "dns"):
        p.add_argument(f"--{name}-port", help=f"default {getattr(ports, name.upper() + '_PORT')}")


def load(env: dict[str, str], args: argparse.Namespace) -> Settings:
    raw: dict[str, tuple[str, str]] = {}  # attr -> (where it came from, text)
    for var, attr in _ENV.items():
        if env.get(var):
            raw[attr] = (var, env[var])
    for attr in ("bootstrap", "log_level", "drain_seconds", "control_plane", "workdir",
                 "dns_capture", "admin_port", "outbound_port", "inbound_port", "agent_port",
                 "health_port", "metrics_port", "dns_port"):
        v = getattr(args, attr, None)
        if v is not None:
            raw[attr] = ("--" + attr.replace("_", "-"), v)
    s = Settings()
    for attr, (source, value) in raw.items():
        spec = _BY_ATTR.get(attr)
        if spec is None:
            setattr(s, attr, _convert(attr, value))
            continue
        try:
            setattr(s, attr, spec.domain.parse(value))
        except ValueError as e:
            raise SettingsError(f"{source}: {e}") from None
    if s.trace_endpoint and not s.trace_endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"REMORA_TRACE_ENDPOINT {s.trace_endpoint!r}: accepted: an http(s) "
                            "URL of an OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces")
    if s.dns_refresh_rate < 0.001:  # Envoy's minimum: 1ms
        raise SettingsError(f"REMORA_DNS_REFRESH_RATE {s.dns_refresh_rate!r}: accepted: seconds, at least 0.001")
    if s.app_metrics:
        try:
            parse_url(s.app_metrics)
        except ValueError as e:
            raise SettingsError(str(e)) from None
    try:  # the HTTP limits (sidecar/http/limits.py): checked here, used by every connection
        http_limits.configure(http_limits.from_env(env))
    except http_limits.LimitsError as e:
        raise SettingsError(str(e)) from None
    if not s.bootstrap and not s.control_plane:
        raise SettingsError("no configuration source: set REMORA_BOOTSTRAP (or --bootstrap) for a "
                            "static config, or REMORA_CONTROL_PLANE (or --control-plane)")
    return s


def _convert(attr: str, value: str) -> Any:
    default = getattr(Settings(), attr)
    try:
        if isinstance(default, bool):
            return str(value).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            port = int(value)
            if attr.endswith("_port") and not 0 <= port <= 65535:
                raise ValueError
            return port
        if isinstance(default, float):
            f = float(value)
            if f < 0:
                raise ValueError
            return f
    except ValueError:
        raise SettingsError(f"{attr.replace('_', '-')}: {value!r} is not a valid "
                            f"{type(default).__name__}") from None
    return str(value)


@dataclass
class Bootstrap:
    config: ProxyConfig
    cert_chain: Path
    key: Path
    roots: Path


def load_bootstrap(path: str) -> Bootstrap:
    """Read ``{"config": ..., "tls": {"cert_chain", "key", "roots"}}`` from JSON or YAML."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SettingsError(f"bootstrap {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml  # lazy: only for non-JSON bootstraps; not loaded at steady state
        except ImportError:
            raise SettingsError(f"bootstrap {path}: not JSON, and PyYAML is not installed") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SettingsError(f"bootstrap {path}: neither JSON nor YAML: {e}") from None
    if not isinstance(data, dict) or "config" not in data or "tls" not in data:
        raise SettingsError(f"bootstrap {path}: expected an object with 'config' and 'tls'")
    try:
        config = ProxyConfig.from_dict(data["config"])
    except ConfigError as e:
        raise SettingsError(f"bootstrap {path}: {e}") from None
    tls = data["tls"]
    missing = [k for k in ("cert_chain", "key", "roots") if not isinstance(tls, dict) or k not in tls]
    if missing:
        raise SettingsError(f"bootstrap {path}: tls.{missing[0]} is required (a PEM file path)")
    base = Path(path).parent
    return Bootstrap(config, *(base / tls[k] for k in ("cert_chain", "key", "roots")))


def default_workdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="remora-proxy-")


def environ() -> dict[str, str]:
    return dict(os.environ)
