"""Keep the ConfigMap ``remora-ca-root-cert`` (the mesh's trust roots) in every namespace.

Injected pods mount it (a required volume), so a namespace without it would hold every injected
pod in ContainerCreating. As Istio does with ``istio-ca-root-cert``: the control plane watches
Namespaces and these ConfigMaps, creates the ConfigMap in each namespace that lacks it, puts the
current roots back when someone edits or deletes it, rewrites it everywhere when the roots change
(rotation: ``set_bundle``), and leaves alone the namespaces configuration excludes (by default
Istio's: kube-system, kube-public, kube-node-lease, local-path-storage) and namespaces being
deleted. Writes are create and patch of this one name only (the chart's RBAC grants no more).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

from control_plane.api.ports import TRUST_CONFIGMAP, TRUST_KEY
from control_plane.sources.listwatch import RETRY, Kind, ListWatch

log = logging.getLogger("remora.control.rootcert")
DEFAULT_EXCLUDED = ("kube-system", "kube-public", "kube-node-lease", "local-path-storage")
LABELS = {"app.kubernetes.io/part-of": "remora", "app.kubernetes.io/managed-by": "remora-control"}
NAMESPACES = Kind("Namespace", "", ("v1",), "namespaces")
CONFIGMAPS = Kind("ConfigMap", "", ("v1",), "configmaps")

CREATED, UPDATED, UNCHANGED, SKIPPED = "created", "updated", "unchanged", "skipped"


class RootCertPublisher:
    def __init__(self, api_client: Any, bundle: str, excluded: Iterable[str] = DEFAULT_EXCLUDED,
                 retry: float = RETRY) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)
        self._client = api_client
        self.bundle = bundle
        self.excluded = frozenset(excluded)
        self.retry = retry
        self.namespaces: dict[str, bool] = {}  # name -> being deleted
        self._pending: set[str] = set()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._watchers: list[ListWatch] = []

    # -- one namespace ----------------------------------------------------------------------

    def wanted(self, namespace: str) -> bool:
        return namespace not in self.excluded and self.namespaces.get(namespace) is False

    def reconcile(self, namespace: str) -> str:
        """Make the ConfigMap in ``namespace`` hold the current roots; what was done."""
        from kubernetes.client.exceptions import ApiException

        if not self.wanted(namespace):
            return SKIPPED
        data = {TRUST_KEY: self.bundle}
        try:
            current = self._api.read_namespaced_config_map(TRUST_CONFIGMAP, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                    "metadata": {"name": TRUST_CONFIGMAP, "namespace": namespace, "labels": LABELS}}
            self._api.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
            log.info("created ConfigMap %s/%s", namespace, TRUST_CONFIGMAP)
            return CREATED
        if (current.data or {}) == data:
            return UNCHANGED
        # A merge patch: no resourceVersion conflicts; keys someone added go (the ConfigMap is ours).
        body = {"data": {**{k: None for k in current.data or {}}, **data}}
        self._api.patch_namespaced_config_map(TRUST_CONFIGMAP, namespace, body)
        log.info("updated ConfigMap %s/%s with the current roots", namespace, TRUST_CONFIGMAP)
        return UPDATED

    def set_bundle(self, bundle: str) -> None:
        """New roots (rotation): every namespace's ConfigMap is rewritten."""
        with self._cv:
            self.bundle = bundle
            self._pending.update(self.namespaces)
            self._cv.notify()

    # -- events -----------------------------------------------------------------------------

    def _enqueue(self, *namespaces: str) -> None:
        with self._cv:
            self._pending.update(namespaces)
            self._cv.notify()

    # The watch threads call these; the lock also guards ``namespaces`` against set_bundle.
    def _namespaces_listed(self, items: list[dict[str, Any]], _version: str) -> None:
        namespaces = {_name(o): _terminating(o) for o in items}
        with self._cv:
            self.namespaces = namespaces
        self._enqueue(*namespaces)

    def _namespace_event(self, event: str, obj: dict[str, Any]) -> None:
        name = _name(obj)
        with self._cv:
            if event == "DELETED":
                self.namespaces.pop(name, None)
                return
            self.namespaces[name] = _terminating(obj)
        self._enqueue(name)

    def _configmaps_listed(self, items: list[dict[str, Any]], _version: str) -> None:
        self._enqueue(*(o["metadata"]["namespace"] for o in items if _name(o) == TRUST_CONFIGMAP))

    def _configmap_event(self, _event: str, obj: dict[str, Any]) -> None:
        if _name(obj) == TRUST_CONFIGMAP:  # the field selector, for servers that ignore it
            self._enqueue(obj["metadata"]["namespace"])

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._pending and not self._stop.is_set():
                    self._cv.wait(1.0)
                if self._stop.is_set():
                    return
                namespace = min(self._pending)
                self._pending.discard(namespace)
            try:
                self.reconcile(namespace)
            except Exception as exc:  # the API server is away, a conflict, a namespace going away
                log.warning("ConfigMap %s/%s: %s; retrying in %.0fs", namespace, TRUST_CONFIGMAP,
                            _reason(exc), self.retry)
                self._stop.wait(self.retry)
                self._enqueue(namespace)

    async def run(self) -> None:
        self._watchers = [
            ListWatch(self._client, NAMESPACES, self._namespaces_listed, self._namespace_event,
                      self._stop, retry=self.retry),
            ListWatch(self._client, CONFIGMAPS, self._configmaps_listed, self._configmap_event,
                      self._stop, field_selector=f"metadata.name={TRUST_CONFIGMAP}", retry=self.retry),
        ]
        threads = [threading.Thread(target=w.run, daemon=True, name=f"rootcert-{w.kind.plural}")
                   for w in self._watchers]
        threads.append(threading.Thread(target=self._work, daemon=True, name="rootcert-writer"))
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            with self._cv:
                self._cv.notify_all()
            for w in self._watchers:
                w.close()


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _terminating(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == "Terminating" or \
        bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)
