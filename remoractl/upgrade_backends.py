"""Where ``remoractl upgrade`` reads pods and restarts workloads: the local cluster (its daemon
socket) or Kubernetes (the kubernetes client and a kubeconfig). Both answer the same questions,
so the upgrade logic (``remoractl/upgrade.py``) is written once.

A restart is what ``kubectl rollout restart`` does: the pod-template annotation
``kubectl.kubernetes.io/restartedAt``. Undoing it puts the previous value of that annotation
back, which is the previous pod template, so the controller returns to the previous
ReplicaSet (Deployment) or revision (StatefulSet, DaemonSet), as ``kubectl rollout undo`` does
for a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, Protocol

from control_plane.api import annotations as ann
from injector import meshconfig
from injector.template import template_hash
from local_cluster import client, config, revisions
from local_cluster.rollouts import RESTARTED_AT
from remoractl import podmetrics
from remoractl.target import Target, TargetError
from remoractl.upgrade_plan import Expected, PodInfo, UpgradeError, Workload, parse_status

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def expected_from(mesh: meshconfig.MeshConfig, revision: str = "", where: str = "the mesh config") -> Expected:
    """What the injector stamps now, computed by the injector's own template function.

    With ``revision``, the mesh config must be that revision's: another revision's injector
    stamps another template, so every pod would look outdated and no wave could pass."""
    if revision and mesh.revision != revision:
        raise UpgradeError(f"--revision {revision!r}: {where} is revision {mesh.revision!r}'s; "
                           f"name revision {revision!r}'s mesh config")
    return Expected(mesh.proxy_version, template_hash(mesh), revision)


class Rollout(Protocol):
    complete: bool
    stalled: bool
    message: str


class Backend(Protocol):
    name: str

    def expected(self, revision: str) -> Expected: ...
    def pods(self, namespace: str | None, selector: dict[str, str]) -> list[PodInfo]: ...
    def restarted_at(self, w: Workload) -> str: ...
    def restart(self, w: Workload) -> None: ...
    def undo(self, w: Workload, previous: str) -> None: ...
    def rollout(self, w: Workload) -> tuple[bool, bool, str]: ...
    def proxies(self) -> dict[tuple[str, str], dict[str, Any]]: ...
    def metrics(self, pod: PodInfo) -> Samples | str: ...


def selected(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def proxies_of(control: Target) -> dict[tuple[str, str], dict[str, Any]]:
    """Every connected proxy by (namespace, pod), from the control plane."""
    try:
        code, body = control.get("/debug/proxies")
    except TargetError as e:
        raise UpgradeError(str(e)) from None
    if code != 200 or not isinstance(body, dict):
        raise UpgradeError(f"{control.where} answered HTTP {code} to /debug/proxies")
    return {(p.get("namespace", ""), p.get("pod", "")): p for p in body.get("proxies") or []}


class LocalBackend:
    """The local cluster named by REMORA_LOCAL_DIR."""

    name = "local"

    def __init__(self, state: config.StateDir, control: Target) -> None:
        self.state, self.control = state, control
        self._status: dict[str, Any] | None = None

    def _call(self, path: str, body: Any = None) -> Any:
        try:
            return client.checked(self.state, "POST" if body is not None else "GET", path, body)
        except client.ClusterError as e:
            raise UpgradeError(str(e)) from None

    def expected(self, revision: str) -> Expected:
        rev = revision or ann.DEFAULT_REVISION
        if rev != ann.DEFAULT_REVISION:
            running = sorted(r["name"] for r in self.status().get("revisions") or [])
            if rev not in running:
                raise UpgradeError(f"--revision {revision!r}: no such revision runs on the local cluster "
                                   f"(running: {', '.join([ann.DEFAULT_REVISION, *running])}; "
                                   "remoractl local revision list)")
        path = revisions.mesh_config_path(self.state, rev)
        try:
            return expected_from(meshconfig.load(path), revision, str(path))
        except meshconfig.MeshConfigError as e:
            raise UpgradeError(str(e)) from None

    def status(self) -> dict[str, Any]:
        return self._call("/status")

    def pods(self, namespace: str | None, selector: dict[str, str]) -> list[PodInfo]:
        out = []
        for p in self.status()["pods"]:
            if namespace not in (None, p["namespace"]) or p.get("terminating"):
                continue
            if not selected(p["labels"], selector):
                continue
            done, total = p["ready"].split("/")
            ready = p["phase"] == "Running" and done == total
            owner = p.get("owner") or {}
            probe = "; ".join(c.get("probeError") or "" for c in p["containers"] if c.get("probeError"))
            reason = f"{p['reason'] or p['phase']}, {p['ready']} containers ready" + (f", {probe}" if probe else "")
            out.append(PodInfo(p["namespace"], p["name"], owner.get("kind", ""), owner.get("name", ""),
                               ready, parse_status(p.get("annotations")), p["labels"], reason))
        return out

    def _rollout(self, action: str, w: Workload) -> dict[str, Any]:
        return self._call("/rollout", {"action": action, "kind": w.kind, "namespace": w.namespace,
                                       "name": w.name})

    def restarted_at(self, w: Workload) -> str:
        return self._rollout("status", w)["restartedAt"]

    def restart(self, w: Workload) -> None:
        self._rollout("restart", w)

    def undo(self, w: Workload, previous: str) -> None:
        self._rollout("undo", w)

    def rollout(self, w: Workload) -> tuple[bool, bool, str]:
        s = self._rollout("status", w)
        return s["complete"], s["stalled"], s["message"]

    def proxies(self) -> dict[tuple[str, str], dict[str, Any]]:
        return proxies_of(self.control)

    def metrics(self, pod: PodInfo) -> Samples | str:
        p = next((x for x in self.status()["pods"]
                  if (x["namespace"], x["name"]) == (pod.namespace, pod.name)), None)
        if p is None or not p["netns"]:
            return "pod is gone"
        return asyncio.run(podmetrics.local(p["netns"], p["podIP"]))


def _rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeBackend:
    """A Kubernetes cluster through the kubernetes client (kubeconfig or in-cluster)."""

    name = "kube"

    def __init__(self, api: Any, mesh_configmap: str, control: Target,
                 mesh_file: Path | None = None) -> None:
        from kubernetes import client as k

        self.api = api
        self.core, self.apps = k.CoreV1Api(api), k.AppsV1Api(api)
        self.mesh_configmap, self.control, self.mesh_file = mesh_configmap, control, mesh_file

    def _err(self, what: str, e: Exception) -> UpgradeError:
        status = getattr(e, "status", None)
        reason = getattr(e, "reason", None) or e
        return UpgradeError(f"{what}: {('HTTP ' + str(status) + ' ') if status else ''}{reason}")

    def expected(self, revision: str) -> Expected:
        try:
            if self.mesh_file is not None:
                return expected_from(meshconfig.load(self.mesh_file), revision, str(self.mesh_file))
            ns, _, name = self.mesh_configmap.rpartition("/")
            cm = self.core.read_namespaced_config_map(name, ns or "remora-system")
            import yaml

            text = (cm.data or {}).get(meshconfig.CONFIGMAP_KEY) or ""
            return expected_from(meshconfig.from_dict(yaml.safe_load(text) or {}), revision,
                                 f"ConfigMap {self.mesh_configmap}")
        except meshconfig.MeshConfigError as e:
            raise UpgradeError(str(e)) from None
        except UpgradeError:
            raise
        except Exception as e:  # ApiException, connection errors
            raise self._err(f"reading the mesh config ConfigMap {self.mesh_configmap}", e) from None

    def _owner(self, namespace: str, refs: list[Any] | None, cache: dict[str, tuple[str, str]]
               ) -> tuple[str, str]:
        ref = next((r for r in refs or [] if r.controller), None)
        if ref is None:
            return "", ""
        if ref.kind != "ReplicaSet":
            return ref.kind, ref.name
        key = f"{namespace}/{ref.name}"
        if key not in cache:
            rs: Any = self.apps.read_namespaced_replica_set(ref.name, namespace)
            dep = next((r for r in rs.metadata.owner_references or [] if r.kind == "Deployment"), None)
            cache[key] = ("Deployment", dep.name) if dep else ("ReplicaSet", ref.name)
        return cache[key]

    def pods(self, namespace: str | None, selector: dict[str, str]) -> list[PodInfo]:
        sel = ",".join(f"{k}={v}" for k, v in selector.items()) or None
        try:
            items = (self.core.list_namespaced_pod(namespace, label_selector=sel) if namespace
                     else self.core.list_pod_for_all_namespaces(label_selector=sel)).items
        except Exception as e:
            raise self._err("listing pods", e) from None
        cache: dict[str, tuple[str, str]] = {}
        out = []
        pod: Any
        for pod in items:
            meta, st = pod.metadata, pod.status
            if meta.deletion_timestamp:
                continue
            conds = {c.type: c.status for c in (st.conditions or [])} if st else {}
            kind, name = self._owner(meta.namespace, meta.owner_references, cache)
            waiting = [cs.state.waiting.reason for cs in
                       [*(st.init_container_statuses or []), *(st.container_statuses or [])]
                       if cs.state and cs.state.waiting and cs.state.waiting.reason] if st else []
            reason = ", ".join([(st.phase if st else "") or "Pending", *waiting])
            out.append(PodInfo(meta.namespace, meta.name, kind, name, conds.get("Ready") == "True",
                               parse_status(meta.annotations), dict(meta.labels or {}), reason))
        return out

    def _read(self, w: Workload) -> Any:
        fn = {"Deployment": self.apps.read_namespaced_deployment,
              "StatefulSet": self.apps.read_namespaced_stateful_set,
              "DaemonSet": self.apps.read_namespaced_daemon_set}[w.kind]
        try:
            return fn(w.name, w.namespace)
        except Exception as e:
            raise self._err(f"reading {w.id}", e) from None

    def _patch(self, w: Workload, value: str | None) -> None:
        fn = {"Deployment": self.apps.patch_namespaced_deployment,
              "StatefulSet": self.apps.patch_namespaced_stateful_set,
              "DaemonSet": self.apps.patch_namespaced_daemon_set}[w.kind]
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}}
        try:
            fn(w.name, w.namespace, body)
        except Exception as e:
            raise self._err(f"patching {w.id}", e) from None

    def restarted_at(self, w: Workload) -> str:
        tmeta = self._read(w).spec.template.metadata
        return ((tmeta.annotations if tmeta else None) or {}).get(RESTARTED_AT, "")

    def restart(self, w: Workload) -> None:
        self._patch(w, _rfc3339())

    def undo(self, w: Workload, previous: str) -> None:
        self._patch(w, previous or None)  # null removes the annotation (merge patch)

    def rollout(self, w: Workload) -> tuple[bool, bool, str]:
        obj = self._read(w)
        st, gen = obj.status, obj.metadata.generation or 0
        if st is None:
            return False, False, "no status yet"
        observed = (st.observed_generation or 0) >= gen
        if w.kind == "Deployment":
            want = obj.spec.replicas if obj.spec.replicas is not None else 1
            conds = {c.type: c for c in (st.conditions or [])}
            stalled = getattr(conds.get("Progressing"), "reason", "") == "ProgressDeadlineExceeded"
            done = observed and (st.updated_replicas or 0) == want and (st.replicas or 0) == want \
                and (st.available_replicas or 0) == want
            return done, stalled, (f"{st.updated_replicas or 0}/{want} updated, "
                                   f"{st.available_replicas or 0} available")
        if w.kind == "StatefulSet":
            want = obj.spec.replicas if obj.spec.replicas is not None else 1
            done = observed and st.update_revision == st.current_revision and \
                (st.ready_replicas or 0) == want
            return done, False, f"{st.updated_replicas or 0}/{want} updated, {st.ready_replicas or 0} ready"
        want = st.desired_number_scheduled or 0
        done = observed and (st.updated_number_scheduled or 0) == want and \
            (st.number_available or 0) == want
        return done, False, f"{st.updated_number_scheduled or 0}/{want} updated"

    def proxies(self) -> dict[tuple[str, str], dict[str, Any]]:
        return proxies_of(self.control)

    def metrics(self, pod: PodInfo) -> Samples | str:
        return podmetrics.kube(self.core, pod.namespace, pod.name)
