"""Proxy settings from the environment (set by the injector) and command-line flags.

Flags override environment variables; bad values fail with one line naming the variable or
flag and what is expected.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.api import ports
from control_plane.api.model import ConfigError, ProxyConfig

from .metrics_merge import parse_url


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
    extra: dict[str, Any] = field(default_factory=dict)

    def own_ports(self) -> frozenset[int]:
        return frozenset((self.admin_port, self.outbound_port, self.inbound_port,
                          self.agent_port, self.health_port, self.metrics_port))


_ENV = {
    "POD_NAME": "pod_name", "POD_NAMESPACE": "pod_namespace", "POD_IP": "pod_ip",
    "SERVICE_ACCOUNT": "service_account", "REMORA_CONTROL_PLANE": "control_plane",
    "REMORA_TRUST_DOMAIN": "trust_domain", "REMORA_TOKEN_FILE": "token_file",
    "REMORA_TRUST_ROOT": "trust_root", "REMORA_WORKDIR": "workdir",
    "REMORA_LOG_LEVEL": "log_level", "REMORA_DRAIN_SECONDS": "drain_seconds",
    "REMORA_OPAQUE_PORTS": "opaque_ports", "REMORA_APP_PROBES": "app_probes",
    "REMORA_BOOTSTRAP": "bootstrap", "REMORA_DETECT_TIMEOUT": "detect_timeout",
    "REMORA_APP_METRICS": "app_metrics", "REMORA_TRACE_ENDPOINT": "trace_endpoint",
    "REMORA_TRACE_SAMPLING": "trace_sampling", "REMORA_ACCESS_LOG": "access_log",
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="static config+certificate file (env REMORA_BOOTSTRAP)")
    p.add_argument("--log-level", help="debug|info|warning|error (env REMORA_LOG_LEVEL)")
    p.add_argument("--drain-seconds", help="SIGTERM drain deadline (env REMORA_DRAIN_SECONDS)")
    p.add_argument("--control-plane", help="host:port of remora-control (env REMORA_CONTROL_PLANE)")
    p.add_argument("--workdir", help="writable dir for key/cert files (env REMORA_WORKDIR)")
    for name in ("admin", "outbound", "inbound", "agent", "health", "metrics"):
        p.add_argument(f"--{name}-port", help=f"default {getattr(ports, name.upper() + '_PORT')}")


def load(env: dict[str, str], args: argparse.Namespace) -> Settings:
    raw: dict[str, str] = {}
    for var, attr in _ENV.items():
        if env.get(var):
            raw[attr] = env[var]
    for attr in ("bootstrap", "log_level", "drain_seconds", "control_plane", "workdir",
                 "admin_port", "outbound_port", "inbound_port", "agent_port", "health_port",
                 "metrics_port"):
        v = getattr(args, attr, None)
        if v is not None:
            raw[attr] = v
    s = Settings()
    for attr, value in raw.items():
        setattr(s, attr, _convert(attr, value))
    if s.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"log level {s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if s.access_log not in ("off", "text", "json"):
        raise SettingsError(f"REMORA_ACCESS_LOG {s.access_log!r}: accepted: off, text, json")
    if not 0 <= s.trace_sampling <= 100:
        raise SettingsError(f"REMORA_TRACE_SAMPLING {s.trace_sampling}: accepted: a percentage 0-100")
    if s.trace_endpoint and not s.trace_endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"REMORA_TRACE_ENDPOINT {s.trace_endpoint!r}: accepted: an http(s) "
                            "URL of an OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces")
    if s.app_metrics:
        try:
            parse_url(s.app_metrics)
        except ValueError as e:
            raise SettingsError(str(e)) from None
    if not s.bootstrap and not s.control_plane:
        raise SettingsError("no configuration source: set REMORA_BOOTSTRAP (or --bootstrap) for a "
                            "static config, or REMORA_CONTROL_PLANE (or --control-plane)")
    return s


def _convert(attr: str, value: str) -> Any:
    default = getattr(Settings(), attr)
    try:
        if attr == "opaque_ports":
            out = tuple(int(p) for p in str(value).replace(" ", "").split(",") if p)
            if any(not 1 <= p <= 65535 for p in out):
                raise ValueError
            return out
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
                            f"{'port list like 3306,25' if attr == 'opaque_ports' else type(default).__name__}"
                            ) from None
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
