"""Startup, readiness and liveness probes, run by the daemon from the node's namespace to the pod
IP, where a kubelet probes from (so, as in a real cluster, STRICT mTLS refuses a probe that the
injector did not rewrite to the proxy's :15020).

httpGet and tcpSocket are run as the kubelet runs them. exec and grpc probes are not run by
the local cluster: they count as passing, and the daemon logs that once per container.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from local_cluster import nsutil
from local_cluster.podenv import resolve_port


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # "httpGet", "tcpSocket" or "unsupported"
    host: str
    port: int
    path: str
    tls: bool
    headers: dict[str, str]
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int


def parse(probe: dict[str, Any], container: dict[str, Any], pod_ip: str) -> ProbeSpec:
    ports = container.get("ports") or []
    where = f"container {container.get('name')!r} probe"
    common: dict[str, Any] = {
        "initial_delay": float(probe.get("initialDelaySeconds", 0)),
        "period": float(probe.get("periodSeconds", 10)),
        "timeout": float(probe.get("timeoutSeconds", 1)),
        "success_threshold": int(probe.get("successThreshold", 1)),
        "failure_threshold": int(probe.get("failureThreshold", 3)),
    }
    if "httpGet" in probe:
        h = probe["httpGet"]
        headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
        return ProbeSpec("httpGet", h.get("host") or pod_ip, resolve_port(ports, h.get("port"), where),
                         h.get("path") or "/", (h.get("scheme") or "HTTP").upper() == "HTTPS",
                         headers, **common)
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return ProbeSpec("tcpSocket", t.get("host") or pod_ip,
                         resolve_port(ports, t.get("port"), where), "", False, {}, **common)
    return ProbeSpec("unsupported", pod_ip, 0, "", False, {}, **common)


async def check(spec: ProbeSpec, netns: str) -> str | None:
    """None when the probe passes, else why it failed."""
    try:
        if spec.kind == "httpGet":
            status, _ = await nsutil.http_get_in(netns, spec.host, spec.port, spec.path,
                                                 spec.timeout, spec.tls, spec.headers)
            return None if 200 <= status < 400 else f"HTTP probe failed with statuscode: {status}"
        if spec.kind == "tcpSocket":
            await nsutil.tcp_check_in(netns, spec.host, spec.port, spec.timeout)
        return None
    except (TimeoutError, OSError, ConnectionError) as e:
        return f"{spec.kind} {spec.host}:{spec.port}{spec.path}: {type(e).__name__}: {e}"
