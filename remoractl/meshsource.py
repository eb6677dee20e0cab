"""Where ``remoractl stat`` and ``remoractl dashboard`` get their numbers: every proxy's
``:15090/stats/prometheus`` and the control plane's proxy status.

The local cluster is read with no setup: its daemon knows every pod's network namespace and
address, and the control plane listens on the node's bridge address; both are reached from
inside the namespaces (``local_cluster.nsutil``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from control_plane.api.ports import METRICS_PORT, MONITORING_PORT
from local_cluster import client, config, meshstats, netns, nsutil
from local_cluster.meshstats import Sample

SCRAPE_TIMEOUT = 3.0


@dataclass
class Snapshot:
    at: float  # monotonic seconds
    pods: list[dict[str, Any]]  # name, namespace, workload, meshed, ip
    samples: dict[str, dict[Sample, float]]  # pod -> its proxy's samples
    errors: dict[str, str] = field(default_factory=dict)  # pod -> why it was not scraped
    proxies: list[dict[str, Any]] = field(default_factory=list)  # control-plane sync status
    proxies_error: str = ""


class LocalSource:
    """The local cluster in ``state`` (``REMORA_LOCAL_DIR``), optionally one namespace."""

    def __init__(self, state: config.StateDir, namespace: str | None = None) -> None:
        self.state, self.namespace = state, namespace

    def describe(self) -> str:
        return f"local cluster {self.state.root}"

    async def snapshot(self) -> Snapshot:
        status = await asyncio.to_thread(client.checked, self.state, "GET", "/status")
        pods = [p for p in status["pods"]
                if self.namespace is None or p["namespace"] == self.namespace]
        meshed = [p for p in pods if p.get("podIP") and "remora-proxy" in
                  {c["name"] for c in p["containers"]}]
        results = await asyncio.gather(*(self._scrape(p) for p in meshed),
                                       self._proxies(status["node"]["netns"]))
        snap = Snapshot(time.monotonic(), [
            {"name": p["name"], "namespace": p["namespace"],
             "workload": f"{p['workload']}.{p['namespace']}", "ip": p.get("podIP") or "",
             "meshed": p in meshed} for p in pods], {})
        for p, r in zip(meshed, results[:-1], strict=True):
            if isinstance(r, str):
                snap.errors[p["name"]] = r
            else:
                snap.samples[f"{p['namespace']}/{p['name']}"] = r
        snap.proxies, snap.proxies_error = results[-1]
        return snap

    async def _scrape(self, p: dict[str, Any]) -> dict[Sample, float] | str:
        try:
            code, body = await nsutil.http_get_in(p["netns"], p["podIP"], METRICS_PORT,
                                                  "/stats/prometheus", timeout=SCRAPE_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError) as e:
            return f"{type(e).__name__}: {e}"
        if code != 200:
            return f"HTTP {code}"
        return meshstats.parse(body.decode(errors="replace"))

    async def _proxies(self, node_netns: str) -> tuple[list[dict[str, Any]], str]:
        try:
            code, body = await nsutil.http_get_in(node_netns, str(netns.GATEWAY), MONITORING_PORT,
                                                  "/debug/proxies", timeout=SCRAPE_TIMEOUT)
            if code != 200:
                return [], f"control plane answered HTTP {code}"
            proxies = json.loads(body)["proxies"]
        except (OSError, TimeoutError, ConnectionError, ValueError, KeyError) as e:
            return [], f"control plane not reachable: {type(e).__name__}: {e}"
        if self.namespace is not None:
            proxies = [p for p in proxies if p["proxy_id"].endswith(f".{self.namespace}")]
        return proxies, ""
