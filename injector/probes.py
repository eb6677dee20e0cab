"""Rewrite app probes to the proxy's app-health endpoint (they must pass under STRICT mTLS).

The kubelet probes the pod IP from outside the mesh; with STRICT mTLS a plain HTTP/TCP/gRPC
probe would be refused by the inbound proxy. So each probe becomes an HTTP GET to
``:15020/app-health/<container>/<kind>``, and the proxy runs the original probe against
127.0.0.1. The originals travel to the proxy in ``REMORA_APP_PROBES`` (JSON).
"""

from __future__ import annotations

import copy
from typing import Any

from control_plane.api.ports import AGENT_PORT

PROBE_KINDS = {"livenessProbe": "livez", "readinessProbe": "readyz", "startupProbe": "startupz"}
HANDLERS = ("httpGet", "tcpSocket", "grpc")
DEFAULT_TIMEOUT_SECONDS = 1  # the kubelet's default


def app_health_path(container: str, kind: str) -> str:
    return f"/app-health/{container}/{PROBE_KINDS[kind]}"


def _resolve_port(container: dict[str, Any], port: Any, where: str) -> int:
    """Named ports are resolved now: the proxy sees only numbers."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(
        f"container {container.get('name')!r} {where}: port {port!r} is neither a number nor "
        "the name of one of the container's ports; fix the probe or name the port"
    )


def _original(container: dict[str, Any], kind: str, probe: dict[str, Any]) -> dict[str, Any] | None:
    """The probe handler the proxy must run, with ports as numbers; None if not rewritable."""
    for handler in HANDLERS:
        if handler in probe:
            spec = copy.deepcopy(probe[handler])
            spec["port"] = _resolve_port(container, spec.get("port"), f"{kind}.{handler}")
            return {handler: spec, "timeoutSeconds": probe.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)}
    return None  # exec probes run inside the container: nothing to rewrite


def rewrite(containers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rewrite HTTP/TCP/gRPC probes of ``containers`` in place; return {path: original}."""
    originals: dict[str, dict[str, Any]] = {}
    for container in containers:
        for kind in PROBE_KINDS:
            probe = container.get(kind)
            if not probe:
                continue
            original = _original(container, kind, probe)
            if original is None:
                continue
            path = app_health_path(container["name"], kind)
            originals[path] = original
            for handler in HANDLERS:
                probe.pop(handler, None)
            probe["httpGet"] = {"path": path, "port": AGENT_PORT, "scheme": "HTTP"}
    return originals
