"""The local cluster's API server: admission and writes into the store, and the one loop that
drives the reconcilers.

Objects live in ``store.Store``; every write returns a change. Three reconcilers act on them:
pods (one ``PodRunner`` each), workloads (``rollouts.Controller``: Deployments, StatefulSets,
DaemonSets, their revisions and rollouts) and services (``servicesync.ServicesSync``: hosts
entries in every pod, DNAT rules in the node namespace, and the YAML export in
``<state>/objects`` that the control plane's files source reads). Whatever changes (a write, a pod becoming Ready) marks the cluster dirty, and one
loop then runs the workload reconciler and the services sync.

A pod is deleted as kubelet and the endpoints controller do it: it leaves the endpoints first
(not Ready in the export, out of the DNAT rules), then, after ``ENDPOINT_PROPAGATION`` seconds
for the control plane to push that to every client proxy, its containers get SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Mapping
from typing import Any

from control_plane.api import tokens
from local_cluster import admission, config, manifests, nodedns, revisions, rollouts, services
from local_cluster.manifests import ManifestError
from local_cluster.netns import GATEWAY, Node
from local_cluster.podenv import SpecError
from local_cluster.pods import APP, PodRunner
from local_cluster.procs import PidRecords
from local_cluster.rollouts import PodView
from local_cluster.servicesync import ServicesSync
from local_cluster.store import Key, Store, now_rfc3339

log = logging.getLogger("remora.local.cluster")

TRUST_CONFIGMAP, TRUST_KEY = "remora-ca-root-cert", "root-cert.pem"
SYNC_DEBOUNCE = 0.1
ENDPOINT_PROPAGATION = 2.0  # seconds between leaving the endpoints and SIGTERM


def _strip_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as submitted: what `apply` compares to decide "unchanged"."""
    out = copy.deepcopy(obj)
    for f in ("uid", "creationTimestamp", "resourceVersion", "generation"):
        out["metadata"].pop(f, None)
    out.pop("status", None)
    if out["kind"] == "Service":
        out.get("spec", {}).pop("clusterIP", None)
    return out


class Cluster:
    def __init__(self, state: config.StateDir, node: Node, webhook_url: str) -> None:
        self.state = state
        self.node = node
        self.node_netns = node.netns
        self.host_ip = str(GATEWAY)
        self.webhook_url = webhook_url
        self.revisions: revisions.Revisions | None = None  # set by the daemon
        self.pids = PidRecords(state.pids)
        self.store = Store()
        self.store.listeners.append(lambda _change: self.mark_dirty())
        self.objects = self.store.objects
        self.workloads = rollouts.Controller(self.store.get, self.store.put, self)
        self.terminating: dict[tuple[str, str], asyncio.Task] = {}
        self._reconcile_lock = asyncio.Lock()
        self.submitted: dict[Key, dict[str, Any]] = {}  # as applied (pods: before admission)
        self.runners: dict[tuple[str, str], PodRunner] = {}
        self.vips = services.VipAllocator()
        self.token_key = tokens.load_key(state.token_key)
        self._node_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self.services_sync = ServicesSync(state, node, self.store, self.runners)
        self._sync_task: asyncio.Task | None = None
        self.stopping = False
        self._store({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        self._store_default_account("default")

    # ---- the store ---------------------------------------------------------------------------

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.store.put(obj)
        return obj

    def _store_default_account(self, namespace: str) -> None:
        key = ("ServiceAccount", namespace, "default")
        if key not in self.objects:
            self._store({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "default", "namespace": namespace}})

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.store.of_kind(kind, namespace)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        obj = self.objects.get(("Namespace", "", namespace))
        return dict((obj or {}).get("metadata", {}).get("labels") or {})

    def configmaps(self, namespace: str) -> Mapping[str, Mapping[str, str]]:
        out = {o["metadata"]["name"]: dict(o.get("data") or {})
               for o in self.of_kind("ConfigMap", namespace)}
        # The control plane's CA root, published in every namespace (Istio's istio-ca-root-cert).
        with contextlib.suppress(OSError):
            out.setdefault(TRUST_CONFIGMAP, {TRUST_KEY: self.state.root_cert.read_text()})
        return out

    def mint(self, pod: dict[str, Any], audience: str, ttl: int) -> str:
        meta = pod["metadata"]
        return tokens.mint(self.token_key, namespace=meta["namespace"],
                           service_account=pod["spec"].get("serviceAccountName") or "default",
                           pod=meta["name"], audience=audience, ttl=ttl)

    # ---- apply / delete ----------------------------------------------------------------------

    async def apply(self, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply each object in dependency order; one result per object (errors included)."""
        results = []
        for obj in manifests.sort_for_apply(objs):
            try:
                action, warnings = await self._apply_one(obj)
                results.append({"object": manifests.describe(obj), "action": action,
                                 "warnings": warnings})
            except (ManifestError, SpecError, services.VipError, admission.AdmissionDenied,
                    admission.WebhookUnavailable) as e:
                results.append({"object": manifests.describe(obj), "error": str(e)})
            except (KeyError, TypeError, ValueError) as e:  # a malformed field deep in a spec
                log.exception("applying %s failed", manifests.describe(obj))
                results.append({"object": manifests.describe(obj),
                                "error": f"{manifests.describe(obj)}: malformed ({type(e).__name__}: "
                                         f"{e}); see {self.state.daemon_log}"})
        return results

    def _require_namespace(self, obj: dict[str, Any]) -> None:
        ns = obj["metadata"].get("namespace")
        if ns and ("Namespace", "", ns) not in self.objects:
            raise ManifestError(f"{manifests.describe(obj)}: namespace {ns!r} not found; "
                                "apply the Namespace first")

    async def _apply_one(self, obj: dict[str, Any]) -> tuple[str, list[str]]:
        self._require_namespace(obj)
        kind = obj["kind"]
        key = manifests.key(obj)
        submitted = _strip_server_fields(obj)
        if self.submitted.get(key) == submitted and key in self.objects:
            return "unchanged", []
        obj = copy.deepcopy(obj)
        if kind == "Pod":
            result = await self._apply_pod(obj)
        elif kind in rollouts.WORKLOAD_KINDS:
            result = await self._apply_workload(obj)
        else:
            result = self._apply_plain(obj)
        self.submitted[key] = submitted
        return result

    def _apply_plain(self, obj: dict[str, Any]) -> tuple[str, list[str]]:
        kind = obj["kind"]
        key = manifests.key(obj)
        old = self.objects.get(key)
        if kind == "Service":
            spec = obj.setdefault("spec", {})
            requested = spec.get("clusterIP") or (old or {}).get("spec", {}).get("clusterIP")
            spec["clusterIP"] = self.vips.allocate(key[1], key[2], requested)
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("type", "ClusterIP")
        self._store(obj)
        if kind == "Namespace":
            self._store_default_account(key[2])
            self.services_sync.write_namespaces_file()
        if kind == "Service":
            self.services_sync.write_all_hosts()
        return ("configured" if old else "created"), []

    async def _apply_pod(self, pod: dict[str, Any]) -> tuple[str, list[str]]:
        key = manifests.key(pod)
        if key in self.objects:
            await self._delete_pod(key[1], key[2])  # pods are immutable: replace it
        spec = pod.setdefault("spec", {})
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("restartPolicy", "Always")
        sa = spec["serviceAccountName"]
        if ("ServiceAccount", key[1], sa) not in self.objects:
            raise ManifestError(f"{manifests.describe(pod)}: service account {sa!r} not found in "
                                f"namespace {key[1]}; apply the ServiceAccount first")
        warnings: list[str] = []
        admitted = copy.deepcopy(pod)
        # The webhook of the revision that selects the pod (local_cluster/revisions.py).
        admitted, warnings = await revisions.admit(self, admitted, self.namespace_labels(key[1]))
        manifests.check_pod_spec(admitted.get("spec") or {}, manifests.describe(pod))
        try:
            runner = self._runner(admitted)  # checks uids and probes before anything is stored
        except SpecError as e:
            raise ManifestError(f"{manifests.describe(pod)}: {e}") from None
        self._store(admitted)
        self.runners[(key[1], key[2])] = runner
        runner.start()
        return "created", warnings

    async def _apply_workload(self, obj: dict[str, Any]) -> tuple[str, list[str]]:
        key = manifests.key(obj)
        old = self.objects.get(key)
        rollouts.rolling_params(obj["kind"], obj.get("spec") or {}, rollouts.replicas_of(obj))
        self.workloads.observe(obj, cause="apply")
        self._store(obj)
        # The first step now (pods appear, or go when scaled down, before apply answers); the
        # rest of a rollout is driven by the loop as pods become Ready.
        warnings, deleting = await self._reconcile_workload(obj)
        await asyncio.gather(*deleting)
        return ("configured" if old else "created"), sorted(set(warnings))

    async def _reconcile_workload(self, obj: dict[str, Any]) -> tuple[list[str], list[asyncio.Task]]:
        async with self._reconcile_lock:
            before = set(self.terminating)
            warnings = await self.workloads.reconcile(obj)
            return warnings, [t for k, t in self.terminating.items() if k not in before]

    async def reconcile_workloads(self) -> None:
        for kind in rollouts.WORKLOAD_KINDS:
            for obj in self.of_kind(kind):
                try:
                    await self._reconcile_workload(obj)
                except (ManifestError, SpecError, admission.AdmissionDenied,
                        admission.WebhookUnavailable) as e:
                    log.warning("%s: %s", manifests.describe(obj), e)

    # ---- rollouts ------------------------------------------------------------------------------

    def workload(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        kind = {k.lower(): k for k in rollouts.WORKLOAD_KINDS}.get(kind.lower().rstrip("s"), kind)
        obj = self.objects.get((kind, namespace, name))
        if obj is None or kind not in rollouts.WORKLOAD_KINDS:
            raise ManifestError(f'{kind.lower()} "{name}" not found in namespace {namespace}; '
                                "rollouts apply to deployment, statefulset and daemonset")
        return obj

    def rollout(self, action: str, kind: str, namespace: str, name: str,
                to_revision: int = 0) -> dict[str, Any]:
        obj = self.workload(kind, namespace, name)
        out: dict[str, Any] = {}
        if action == "restart":
            obj = self.workloads.restart(obj)
        elif action == "undo":
            obj, out["rolledBackTo"] = self.workloads.undo(obj, to_revision)
        elif action != "status":
            raise ManifestError(f"unknown rollout action {action!r}; use restart, undo or status")
        if action != "status":
            self.submitted.pop(manifests.key(obj), None)  # a later apply of the file is a change
        return {**out, **self.workloads.status(obj), "history": self.workloads.history(obj)}

    def workload_statuses(self) -> list[dict[str, Any]]:
        return [self.workloads.status(o) for kind in rollouts.WORKLOAD_KINDS
                for o in self.of_kind(kind)]

    # ---- the pods reconciler, as the workload controllers see it --------------------------------

    def pods_of(self, kind: str, namespace: str, name: str) -> list[PodView]:
        return [PodView(n, (r.pod["metadata"].get("labels") or {}).get(rollouts.HASH_LABEL, ""),
                        r.ready)
                for (ns, n), r in sorted(self.runners.items())
                if ns == namespace and manifests.owner_ref(r.pod) == (kind, name)
                and (ns, n) not in self.terminating]

    def is_terminating(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.terminating

    async def create_pod(self, pod: dict[str, Any]) -> list[str]:
        _, warnings = await self._apply_pod(pod)
        return warnings

    def delete_pod_soon(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self.terminating:
            task = asyncio.create_task(self._delete_pod(namespace, name))
            self.terminating[(namespace, name)] = task
            task.add_done_callback(lambda _t: self._terminated(namespace, name))

    def _terminated(self, namespace: str, name: str) -> None:
        self.terminating.pop((namespace, name), None)
        self.mark_dirty()

    async def delete(self, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for obj in reversed(manifests.sort_for_apply(objs)):
            key = manifests.key(obj)
            if key == ("Namespace", "", "default"):
                results.append({"object": manifests.describe(obj),
                                "error": "the default namespace cannot be deleted"})
                continue
            found = key in self.objects
            await self._delete(key)
            results.append({"object": manifests.describe(obj),
                            "action": "deleted" if found else "not found"})
        return results

    async def _delete(self, key: Key) -> None:
        kind, ns, name = key
        if kind == "Namespace":
            inside = [k for k in self.objects if k[1] == name]
            await asyncio.gather(*(self._delete(k) for k in inside
                                   if k[0] in ("Pod", *rollouts.WORKLOAD_KINDS)))
            for k in inside:
                await self._delete(k)
        elif kind in rollouts.WORKLOAD_KINDS:
            self.objects.pop(key, None)  # first, so that the loop does not recreate its pods
            self.workloads.forget(key)
            owned = [n for (pns, n), r in self.runners.items()
                     if pns == ns and manifests.owner_ref(r.pod) == (kind, name)]
            await asyncio.gather(*(self._delete_pod(ns, n) for n in owned))
        elif kind == "Pod":
            await self._delete_pod(ns, name)
        elif kind == "Service":
            self.vips.release(ns, name)
        self.submitted.pop(key, None)
        self.store.remove(key)
        if kind == "Service":
            self.services_sync.write_all_hosts()
        if kind == "Namespace":
            self.services_sync.write_namespaces_file()

    async def _delete_pod(self, ns: str, name: str) -> None:
        pending = self.terminating.get((ns, name))
        if pending is not None and pending is not asyncio.current_task():
            await asyncio.gather(pending, return_exceptions=True)  # one deletion per pod
            return
        runner = self.runners.get((ns, name))
        self.submitted.pop(("Pod", ns, name), None)
        if runner is not None:
            serving = runner.ready
            runner.terminating, runner.deleted_at = True, now_rfc3339()  # out of the endpoints first
            if serving:
                await self.sync_endpoints()
                await asyncio.sleep(ENDPOINT_PROPAGATION)
            await runner.stop()
            self.runners.pop((ns, name), None)
        self.store.remove(("Pod", ns, name))
        self.mark_dirty()

    async def shutdown(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.terminating.values(), return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in list(self.runners.values())),
                             return_exceptions=True)
        self.runners.clear()
        if self._sync_task is not None:
            self._sync_task.cancel()

    # ---- pods ----------------------------------------------------------------------------------

    def _runner(self, pod: dict[str, Any]) -> PodRunner:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        suffix = config.pod_netns_name(ns, name)

        async def add() -> tuple[str, str]:
            async with self._node_lock:
                p = await asyncio.to_thread(self.node.add_pod, suffix)
            p.write_hosts(services.host_entries(self.of_kind("Service"), ns))
            nodedns.write_resolv_conf(p.netns, ns)
            return p.netns, p.ip

        async def remove() -> None:
            async with self._node_lock:
                await asyncio.to_thread(self.node.remove_pod, suffix)

        return PodRunner(self, pod, self.state.pod_dir(ns, name), add, remove)

    def changed(self, runner: PodRunner) -> None:
        self.mark_dirty()

    def find(self, namespace: str, name: str) -> PodRunner:
        runner = self.runners.get((namespace, name))
        if runner is None:
            raise ManifestError(f'pod "{name}" not found in namespace {namespace}')
        return runner

    def default_container(self, runner: PodRunner) -> str:
        annotations = runner.pod["metadata"].get("annotations") or {}
        name = annotations.get("kubectl.kubernetes.io/default-container")
        if name in runner.containers:
            return name
        return next(c.name for c in runner.containers.values() if c.kind == APP)

    def exec_command(self, namespace: str, pod: str, container: str | None,
                     argv: list[str]) -> tuple[list[str], dict[str, str]]:
        runner = self.find(namespace, pod)
        container = container or self.default_container(runner)
        if container not in runner.containers:
            raise ManifestError(f"container {container!r} is not in pod {pod}; containers: "
                                + ", ".join(runner.containers))
        if not runner.netns or runner.dirs is None:
            raise ManifestError(f"pod {pod} is not running yet ({runner.phase})")
        return runner.exec_command(container, argv)

    async def _wait_webhook(self, timeout: float = 30.0) -> None:
        """failurePolicy Fail: wait a little for the injector to come up, then refuse."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        host, port = self.webhook_url.removeprefix("https://").rsplit(":", 1)
        while True:
            if (self.state.injector / "ca.crt").exists():
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1)
                    w.close()
                    return
                except (OSError, TimeoutError):
                    pass
            if loop.time() > deadline:
                raise admission.WebhookUnavailable(
                    f"the injector webhook at {self.webhook_url} is not answering; see "
                    f"{self.state.system / 'injector.log'}")
            await asyncio.sleep(0.2)

    # ---- syncing the exported state ----------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty.set()
        if self._sync_task is None or self._sync_task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (unit tests)
                self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        """The one loop: workloads towards their revisions, then services and the export."""
        while not self.stopping:
            await self._dirty.wait()
            await asyncio.sleep(SYNC_DEBOUNCE)
            self._dirty.clear()
            try:
                await self.reconcile_workloads()
                await self.sync_endpoints()
            except Exception:
                log.exception("reconciling failed")

    async def sync_endpoints(self) -> None:
        await self.services_sync.sync()

    # ---- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        pods = []
        for (ns, name), r in sorted(self.runners.items()):
            pods.append({"namespace": ns, "name": name, **r.status(),
                         "defaultContainer": self.default_container(r),
                         "workload": manifests.owner(r.pod) or name,
                         "owner": dict(zip(("kind", "name"), manifests.owner_ref(r.pod) or ("", ""),
                                           strict=True)),
                         "terminating": (ns, name) in self.terminating,
                         "serviceAccount": r.pod["spec"].get("serviceAccountName") or "default",
                         "labels": r.pod["metadata"].get("labels") or {},
                         "annotations": r.pod["metadata"].get("annotations") or {}})
        backends = self.services_sync.backends()
        svcs = []
        for svc in self.of_kind("Service"):
            spec = svc.get("spec") or {}
            ports = [f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []]
            eps = {f"{e.ip}:{e.port}" for p in spec.get("ports") or []
                   for e in backends.get((spec["clusterIP"], p["port"]), [])}
            svcs.append({"namespace": svc["metadata"]["namespace"], "name": svc["metadata"]["name"],
                         "clusterIP": spec["clusterIP"], "ports": ports,
                         "endpoints": sorted(eps)})
        return {"pods": pods, "services": svcs, "workloads": self.workload_statuses()}
