"""Where ``remoractl stat`` and ``remoractl dashboard`` get their numbers.

Two sources, one shape (``current(window)`` → the view of ``remoractl/meshview.py`` plus the
proxies' sync status):

- the local cluster, with no setup: its daemon knows every pod's network namespace and
  address; every proxy's ``:15090/stats/prometheus`` is read from inside those namespaces, and
  rates come from successive scrapes;
- a Prometheus that scrapes the proxies (``--prometheus URL``, e.g. on Kubernetes after
  ``kubectl port-forward``): ``increase(...[window])`` of Istio's metrics.

The proxies' sync status comes from the control plane, found as by every live command
(``remoractl/target.py``); with ``--prometheus`` a control plane that cannot be found only
leaves the sync status out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from local_cluster import client, config
from local_cluster.meshstats import Sample
from remoractl import meshview, podmetrics
from remoractl.target import Target, TargetError, add_target_args, resolve


class SourceError(RuntimeError):
    """A one-line, user-facing error: the data source cannot be read."""


@dataclass
class Snapshot:
    at: float  # monotonic seconds
    pods: list[dict[str, Any]]  # name, namespace, workload, meshed, ip
    samples: dict[str, dict[Sample, float]]  # pod -> its proxy's samples
    errors: dict[str, str] = field(default_factory=dict)  # pod -> why it was not scraped
    proxies: list[dict[str, Any]] = field(default_factory=list)  # control-plane sync status
    proxies_error: str = ""


def _result(source: str, view: dict[str, Any], pods: list, errors: dict, proxies: list,
            proxies_error: str) -> dict[str, Any]:
    return {"source": source, **view, "pods": pods, "scrape_errors": errors, "proxies": proxies,
            "proxies_error": proxies_error}


class _Scraped:
    """Every meshed pod's proxy scraped now; rates from successive scrapes. Subclasses say
    which pods there are (``_pods``) and how one is scraped (``_scrape``)."""

    def __init__(self, target: Target, namespace: str | None) -> None:
        self.target, self.namespace = target, namespace
        self.history: collections.deque[Snapshot] = collections.deque()

    def describe(self) -> str:
        raise NotImplementedError

    async def _pods(self) -> list[dict[str, Any]]:
        """name, namespace, workload, ip, meshed, and what ``_scrape`` needs."""
        raise NotImplementedError

    async def _scrape(self, p: dict[str, Any]) -> dict[Sample, float] | str:
        raise NotImplementedError

    async def current(self, window: float) -> dict[str, Any]:
        """Scrape now; rates over the scrapes of the last ``window`` seconds (none yet: 0)."""
        snap = await self.snapshot()
        self.history.append(snap)
        while len(self.history) > 2 and snap.at - self.history[1].at >= window:
            self.history.popleft()
        first = self.history[0]
        seconds = snap.at - first.at
        before = first.samples if seconds else snap.samples  # one scrape so far: no rates yet
        view = meshview.view(before, snap.samples, seconds)
        return _result(self.describe(), view, snap.pods, snap.errors, snap.proxies,
                       snap.proxies_error)

    async def snapshot(self) -> Snapshot:
        pods = await self._pods()
        meshed = [p for p in pods if p["meshed"]]
        results = await asyncio.gather(*(self._scrape(p) for p in meshed),
                                       proxy_status(self.target, self.namespace))
        snap = Snapshot(time.monotonic(), [
            {k: p[k] for k in ("name", "namespace", "workload", "ip", "meshed")} for p in pods], {})
        scraped: list[Any] = list(results[:-1])
        for p, r in zip(meshed, scraped, strict=True):
            if isinstance(r, str):
                snap.errors[p["name"]] = r
            else:
                snap.samples[f"{p['namespace']}/{p['name']}"] = r
        last: Any = results[-1]
        snap.proxies, snap.proxies_error = last
        return snap


class LocalSource(_Scraped):
    """The local cluster in ``state`` (``REMORA_LOCAL_DIR``), optionally one namespace."""

    def __init__(self, state: config.StateDir, target: Target, namespace: str | None = None) -> None:
        super().__init__(target, namespace)
        self.state = state

    def describe(self) -> str:
        return f"local cluster {self.state.root}"

    async def _pods(self) -> list[dict[str, Any]]:
        try:
            status = await asyncio.to_thread(client.checked, self.state, "GET", "/status")
        except client.ClusterError as e:
            raise SourceError(str(e)) from None
        return [{"name": p["name"], "namespace": p["namespace"], "workload": f"{p['workload']}.{p['namespace']}",
                 "ip": p.get("podIP") or "", "netns": p.get("netns"),
                 "meshed": bool(p.get("podIP")) and "remora-proxy" in {c["name"] for c in p["containers"]}}
                for p in status["pods"] if self.namespace in (None, p["namespace"])]

    async def _scrape(self, p: dict[str, Any]) -> dict[Sample, float] | str:
        return await podmetrics.local(p["netns"], p["ip"])


class KubeSource(_Scraped):
    """A Kubernetes cluster (the target's kubeconfig): pods from the API, each proxy scraped
    through the API server's pod proxy (RBAC: list pods, get pods/proxy)."""

    def __init__(self, target: Target, namespace: str | None = None) -> None:
        from kubernetes import client as k

        super().__init__(target, namespace)
        self.core = k.CoreV1Api(target.api)

    def describe(self) -> str:
        return f"Kubernetes API server {self.core.api_client.configuration.host}"

    async def _pods(self) -> list[dict[str, Any]]:
        try:
            listed: Any = await asyncio.to_thread(
                lambda: self.core.list_namespaced_pod(self.namespace, _request_timeout=10) if self.namespace
                else self.core.list_pod_for_all_namespaces(_request_timeout=10))
        except Exception as e:  # ApiException, connection errors
            raise SourceError(f"cannot list pods ({self.describe()}): "
                              f"{getattr(e, 'reason', None) or e}") from None
        out = []
        pod: Any
        for pod in listed.items:
            meta, spec, st = pod.metadata, pod.spec, pod.status
            if meta.deletion_timestamp or (st and st.phase != "Running"):
                continue
            out.append({"name": meta.name, "namespace": meta.namespace,
                        "workload": f"{_workload(meta)}.{meta.namespace}", "ip": (st and st.pod_ip) or "",
                        "meshed": any(c.name == "remora-proxy" for c in [*(spec.containers or []),
                                                                         *(spec.init_containers or [])])})
        return out

    async def _scrape(self, p: dict[str, Any]) -> dict[Sample, float] | str:
        return await asyncio.to_thread(podmetrics.kube, self.core, p["namespace"], p["name"])


def _workload(meta: Any) -> str:
    """The pod's workload as the injector names it: its controller (a Deployment for a
    ReplicaSet that carries the pod-template-hash), else the pod."""
    ref = next((r for r in meta.owner_references or [] if r.controller), None)
    if ref is None:
        return str(meta.name)
    suffix = "-" + (meta.labels or {}).get("pod-template-hash", "\0")
    return str(ref.name).removesuffix(suffix) if ref.kind == "ReplicaSet" else str(ref.name)


async def proxy_status(target: Target | TargetError, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
    """The control plane's proxy list (one namespace's), or why there is none."""
    try:
        if isinstance(target, TargetError):
            raise target
        code, body = await asyncio.to_thread(target.get, "/debug/proxies")
    except TargetError as e:
        return [], str(e)
    if code != 200:
        return [], f"{target.where} answered HTTP {code}"
    try:
        proxies = body["proxies"]
    except (KeyError, TypeError):
        return [], f"{target.where} answered something other than its proxy list"
    if namespace is not None:
        proxies = [p for p in proxies if p["proxy_id"].endswith(f".{namespace}")]
    return proxies, ""


# Counters whose increase over the window the view needs; the TCP open/close counters are read
# as they are (the view derives open connections and the mTLS share from them).
_INCREASE = ("istio_requests_total", "istio_request_duration_milliseconds_bucket",
             "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")
_RAW = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total")


class PrometheusSource:
    """A Prometheus server at ``url`` that scrapes the proxies (``/api/v1/query``)."""

    def __init__(self, url: str, target: Target | TargetError, namespace: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"--prometheus {url!r}: accepted: an http(s) URL such as "
                              "http://127.0.0.1:9090")
        self.url, self.target, self.namespace = url.rstrip("/"), target, namespace

    def describe(self) -> str:
        return f"Prometheus {self.url}"

    async def current(self, window: float) -> dict[str, Any]:
        seconds = max(1, round(window))
        ns = f'{{destination_workload_namespace="{self.namespace}"}}' if self.namespace else ""
        increase = [f"increase({m}{ns}[{seconds}s])" for m in _INCREASE]
        raw = [f"{m}{ns}" for m in _RAW]
        results = await asyncio.gather(*(asyncio.to_thread(self._query, q) for q in increase + raw))
        after: dict[Sample, float] = {}
        before: dict[Sample, float] = {}
        for name, rows in zip(_INCREASE + _RAW, results, strict=True):
            for row in rows:
                labels = tuple(sorted((k, v) for k, v in row["metric"].items() if k != "__name__"))
                after[(name, labels)] = float(row["value"][1])
                if name in _RAW:  # read as it is: no increase in the window
                    before[(name, labels)] = float(row["value"][1])
        view = meshview.view({"prometheus": before}, {"prometheus": after}, float(seconds))
        proxies, proxies_error = await proxy_status(self.target, self.namespace)
        return _result(self.describe(), view, [], {}, proxies, proxies_error)

    def _query(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot query Prometheus at {self.url}: {e}") from None
        if body.get("status") != "success":
            raise SourceError(f"Prometheus at {self.url} refused {query!r}: {body.get('error')}")
        return body["data"]["result"]


Source = LocalSource | KubeSource | PrometheusSource


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None, help="only this namespace (default: all)")
    p.add_argument("--prometheus", metavar="URL",
                   help="read a Prometheus that scrapes the proxies (e.g. on Kubernetes after "
                        "kubectl port-forward) instead of the local cluster")
    add_target_args(p)


def from_args(args: argparse.Namespace) -> Source:
    """The source the flags name; TargetError when there is no control plane to read."""
    if args.prometheus:
        try:
            target: Target | TargetError = resolve(args)
        except TargetError as e:  # the metrics are Prometheus's: only the sync status is missing
            target = e
        return PrometheusSource(args.prometheus, target, args.namespace)
    target = resolve(args)
    if target.state is not None:
        return LocalSource(target.state, target, args.namespace)
    if target.api is not None:
        return KubeSource(target, args.namespace)
    target.get("/debug/proxies")  # an unreachable control plane is the first thing to say
    raise SourceError(f"the proxies' metrics are read from the local cluster, Kubernetes or a Prometheus; "
                      f"with {target.where} give --prometheus URL (a Prometheus that scrapes the proxies)")
