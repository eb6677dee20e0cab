"""The services reconciler: what pods and the control plane see of the store.

Hosts entries (service name -> VIP) in every pod, DNAT rules VIP:port -> Ready endpoints in the
node namespace, the namespaces file the injector reads, and the YAML export in ``<state>/objects``
that the control plane's files source reads (pods with their status; a terminating pod with
``deletionTimestamp`` and Ready False, so it leaves every client proxy's endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from pathlib import Path

import yaml

from local_cluster import config, manifests, services
from local_cluster.netns import Node
from local_cluster.podenv import SpecError, resolve_port
from local_cluster.pods import PodRunner
from local_cluster.store import Store

log = logging.getLogger("remora.local.services")


class ServicesSync:
    def __init__(self, state: config.StateDir, node: Node, store: Store,
                 runners: dict[tuple[str, str], PodRunner]) -> None:
        self.state, self.node, self.store, self.runners = state, node, store, runners
        self._written: dict[str, str] = {}
        self._rules = ""
        self._lock = asyncio.Lock()

    def write_all_hosts(self) -> None:
        svcs = self.store.of_kind("Service")
        for (ns, name), runner in self.runners.items():
            pod = self.node.pods.get(config.pod_netns_name(ns, name))
            if pod is not None and runner.netns:
                pod.write_hosts(services.host_entries(svcs, ns))

    def write_namespaces_file(self) -> None:
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": o["metadata"]["name"], "labels": o["metadata"].get("labels") or {}}}
            for o in self.store.of_kind("Namespace")]
        _atomic_write(self.state.namespaces_file, yaml.safe_dump_all(docs, sort_keys=True))

    async def sync(self) -> None:
        """Export and rules now (serialised: a deletion calls this outside the loop too)."""
        async with self._lock:
            self.sync_now()
            await asyncio.to_thread(self.sync_rules)

    def exports(self) -> dict[str, str]:
        """File name -> YAML of every object the control plane reads."""
        out = {}
        for (kind, ns, name), obj in self.store.objects.items():
            if kind not in manifests.CONTROL_PLANE_KINDS:
                continue
            if kind == "Pod":
                runner = self.runners.get((ns, name))
                if runner is None or not runner.ip:
                    continue
                obj = {**obj, "status": runner.k8s_status()}
                if runner.terminating:  # what the API server sets on delete
                    obj["metadata"] = {**obj["metadata"], "deletionTimestamp": runner.deleted_at}
            fname = f"{kind.lower()}.{ns or '_'}.{name}.yaml"
            out[fname] = yaml.safe_dump(obj, sort_keys=True)
        return out

    def sync_now(self) -> None:
        self.state.objects.mkdir(parents=True, exist_ok=True)
        wanted = self.exports()
        for fname, text in wanted.items():
            if self._written.get(fname) != text:
                _atomic_write(self.state.objects / fname, text)
        for fname in set(self._written) - set(wanted):
            with contextlib.suppress(FileNotFoundError):
                (self.state.objects / fname).unlink()
        self._written = wanted

    def backends(self) -> dict[tuple[str, int], list[services.Endpoint]]:
        out: dict[tuple[str, int], list[services.Endpoint]] = {}
        for svc in self.store.of_kind("Service"):
            spec, ns = svc.get("spec") or {}, svc["metadata"]["namespace"]
            ready = [r for (pns, _), r in sorted(self.runners.items())
                     if pns == ns and r.ready
                     and manifests.selector_matches(spec.get("selector"), r.pod["metadata"].get("labels"))]
            for port in spec.get("ports") or []:
                eps = []
                for r in ready:
                    ports = [p for c in r.pod["spec"]["containers"] for p in c.get("ports") or []]
                    try:
                        target = resolve_port(ports, port.get("targetPort", port["port"]), "Service")
                    except SpecError:
                        continue
                    eps.append(services.Endpoint(r.ip, target))
                out[(spec["clusterIP"], port["port"])] = eps
        return out

    def sync_rules(self) -> None:
        rules = services.dnat_rules(self.backends())
        if rules == self._rules:
            return
        proc = subprocess.run(["ip", "netns", "exec", self.node.netns, "iptables-restore"],
                              input=rules, capture_output=True, text=True)
        if proc.returncode != 0:
            log.error("iptables-restore in %s failed: %s", self.node.netns, proc.stderr.strip())
            return
        self._rules = rules


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
