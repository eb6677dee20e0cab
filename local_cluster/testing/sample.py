"""The sample application on a running local cluster: apply it, wait for it, measure it.

Shared by ``remoractl demo`` (which prints) and the end-to-end test (which asserts).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.api.ports import METRICS_PORT
from local_cluster import client, config, manifests, meshstats, nsutil
from local_cluster.cluster import ENDPOINT_PROPAGATION

MANIFESTS = config.REPO_ROOT / "examples" / "manifests"
NAMESPACE = "demo"
SPLIT = {"reviews-v1": 0.8, "reviews-v2": 0.2}  # what examples/manifests/30-traffic.yaml asks
PLAINTEXT_TARGET = ("reviews-v1", 9080, "/reviews/1")


@dataclass
class Measurement:
    seconds: float
    edges: list[meshstats.Edge]
    split: dict[str, float]
    handshakes: dict[str, float]
    plaintext: str  # what happened to a plaintext request from outside the mesh
    plaintext_refused: bool
    scrape_errors: dict[str, str] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)

    def seen_by_servers(self, edge: meshstats.Edge) -> dict[str, set[str]]:
        """For an outbound edge: {server workload: the client identities its inbound proxy saw
        from this edge's source} (the servers are the pods behind the edge's service)."""
        name = edge.service.split(".")[0]
        svc = next((s for s in self.services if s["name"] == name), None)
        ips = {e.rsplit(":", 1)[0] for e in (svc or {}).get("endpoints", [])}
        servers = {p["workload"] for p in self.pods if p["podIP"] in ips}
        source = next((p for p in self.pods if p["workload"] == edge.workload), None)
        if source is None:
            return {}
        suffix = f"/ns/{source['namespace']}/sa/{source['serviceAccount']}"
        return {e.workload: {p for p in e.peers if p.endswith(suffix)}
                for e in self.edges if e.direction == "inbound" and e.workload in servers}


def apply(state: config.StateDir, path: Path = MANIFESTS) -> list[dict[str, Any]]:
    objs = manifests.load_paths([path], NAMESPACE)
    out = client.checked(state, "POST", "/apply", {"namespace": NAMESPACE, "objects": objs})
    errors = [r["error"] for r in out["results"] if "error" in r]
    if errors:
        raise client.ClusterError("; ".join(errors))
    return out["results"]


def pods(state: config.StateDir) -> list[dict[str, Any]]:
    return [p for p in client.checked(state, "GET", "/status")["pods"] if p["namespace"] == NAMESPACE]


def is_ready(p: dict[str, Any]) -> bool:
    done, total = p["ready"].split("/")
    return p["phase"] == "Running" and done == total


def wait_ready(state: config.StateDir, timeout: float = 120.0,
               progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        current = pods(state)
        ready = [p for p in current if is_ready(p)]
        if progress:
            progress(len(ready), len(current))
        if current and len(ready) == len(current):
            # Ready pods become endpoints in every client proxy only after the control plane
            # pushed them: measure from then on, not from the last readiness change.
            time.sleep(ENDPOINT_PROPAGATION)
            return current
        if time.monotonic() > deadline:
            late = ", ".join(f"{p['name']} ({p['reason'] or p['phase']}, {p['ready']})"
                             for p in current if not is_ready(p))
            raise client.ClusterError(f"pods not ready after {timeout:.0f} s: {late}; "
                                      "see remoractl local logs -n demo POD -c remora-proxy")
        time.sleep(0.5)


def injected(p: dict[str, Any]) -> bool:
    names = {c["name"]: c["kind"] for c in p["containers"]}
    return names.get("remora-init") == "init" and "remora-proxy" in names


async def _scrape_all(current: list[dict[str, Any]]) -> dict[str, tuple[str, dict | str]]:
    async def one(p: dict[str, Any]) -> tuple[str, dict | str]:
        try:
            status, body = await nsutil.http_get_in(p["netns"], p["podIP"], METRICS_PORT,
                                                    "/metrics", timeout=3)
        except (OSError, TimeoutError, ConnectionError) as e:
            return p["workload"], f"{type(e).__name__}: {e}"
        if status != 200:
            return p["workload"], f"HTTP {status}"
        return p["workload"], meshstats.parse(body.decode(errors="replace"))

    results = await asyncio.gather(*(one(p) for p in current))
    return {p["name"]: r for p, r in zip(current, results, strict=True)}


def scrape(current: list[dict[str, Any]]) -> dict[str, tuple[str, dict | str]]:
    """{pod: (workload, samples or an error)} from every pod's proxy."""
    return asyncio.run(_scrape_all(current))


async def _plaintext(node_netns: str, ip: str, port: int, path: str) -> tuple[str, bool]:
    """A plain HTTP request from the node namespace (outside the mesh) straight to a pod."""
    try:
        status, body = await nsutil.http_get_in(node_netns, ip, port, path, timeout=3)
    except (OSError, ConnectionError) as e:
        return f"refused ({type(e).__name__}: {e})", True
    except TimeoutError:
        return "no answer within 3 s", True
    if status == 200:
        return f"answered HTTP {status}: {body[:80].decode(errors='replace')}", False
    return f"answered HTTP {status} without a TLS client certificate", status in (401, 403)


def plaintext_probe(state: config.StateDir, current: list[dict[str, Any]]) -> tuple[str, bool]:
    workload, port, path = PLAINTEXT_TARGET
    target = next(p for p in current if p["workload"] == workload)
    node = client.checked(state, "GET", "/status")["node"]["netns"]
    text, refused = asyncio.run(_plaintext(node, target["podIP"], port, path))
    return f"{target['podIP']}:{port} ({target['name']}): {text}", refused


def measure(state: config.StateDir, seconds: float,
            tick: Callable[[float], None] | None = None) -> Measurement:
    """Subtract two scrapes ``seconds`` apart (the loadgen pod drives the traffic)."""
    current = pods(state)
    before = scrape(current)
    start = time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 0:
        time.sleep(min(1.0, left))
        if tick:
            tick(time.monotonic() - start)
    after = scrape(current)
    elapsed = time.monotonic() - start
    per_pod: dict[str, tuple[str, dict]] = {}
    errors: dict[str, str] = {}
    for name, (workload, samples) in after.items():
        if isinstance(samples, str):
            errors[name] = samples
            continue
        prev = before.get(name, (workload, {}))[1]
        per_pod[name] = (workload, meshstats.delta(samples, prev if isinstance(prev, dict) else {}))
    edges = meshstats.edges(per_pod)
    # Totals since the proxies started (connections are pooled: few handshakes in a window).
    handshakes: dict[str, float] = {}
    for _, samples in after.values():
        for (metric, labels), v in (samples.items() if isinstance(samples, dict) else ()):
            if metric == "remora_tls_handshakes_total":
                key = "handshakes " + dict(labels).get("side", "")
            elif metric == "remora_upstream_pool_reused_total":
                key = "pooled reuses"
            else:
                continue
            handshakes[key] = handshakes.get(key, 0.0) + v
    text, refused = plaintext_probe(state, current)
    services = [s for s in client.checked(state, "GET", "/status")["services"]
                if s["namespace"] == NAMESPACE]
    return Measurement(elapsed, edges, meshstats.split(edges, SPLIT), handshakes, text, refused,
                       errors, current, services)


def split_ok(split: dict[str, float], tolerance: float = 0.1) -> bool:
    return all(abs(split.get(w, 0.0) - want) <= tolerance for w, want in SPLIT.items())


def as_json(m: Measurement) -> str:
    return json.dumps({
        "seconds": m.seconds, "split": m.split, "handshakes": m.handshakes,
        "plaintext": m.plaintext, "edges": [
            {"workload": e.workload, "direction": e.direction, "service": e.service,
             "requests": e.requests, "ok": e.ok, "peers": sorted(e.peers),
             "p50": e.quantile(0.5), "p99": e.quantile(0.99)} for e in m.edges],
    }, indent=2)


def loadgen_codes(state: config.StateDir) -> dict[str, float]:
    """Response codes the loadgen's own proxy counted for loadgen -> web since it started."""
    current = [p for p in pods(state) if p["name"] == "loadgen"]
    if not current:
        raise client.ClusterError("no loadgen pod in namespace demo")
    (workload, samples), = scrape(current).values()
    if isinstance(samples, str):
        raise client.ClusterError(f"cannot scrape the loadgen's proxy: {samples}")
    for e in meshstats.edges({"loadgen": (workload, samples)}):
        if e.direction == "outbound" and e.service.startswith("web."):
            return dict(e.codes)
    return {}


def codes_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}

