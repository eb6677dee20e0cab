"""The same objects watched on a Kubernetes API server (the kubernetes client: list, then watch).

Each kind is listed and watched on its own thread (``listwatch``): a kind that fails or is not
served (an Istio CRD not installed, or only at v1beta1) is retried there and never holds up the
others. Readiness comes from what the mesh needs: the core kinds (Services, Pods,
EndpointSlices) listed, and each optional Istio kind tried once (listed, or found missing), so
the first configuration carries the policies that exist. Endpoints come from EndpointSlices
when the service has any, else from the pods its selector matches (the builder decides).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

from control_plane.resources import key_of
from control_plane.sources.base import Source
from control_plane.sources.listwatch import MISSING_RETRY, RETRY, Kind, ListWatch

ISTIO_VERSIONS = ("v1", "v1beta1")  # Istio < 1.22 serves v1beta1 only
KINDS = (
    Kind("Service", "", ("v1",), "services"),
    Kind("Pod", "", ("v1",), "pods"),
    Kind("EndpointSlice", "discovery.k8s.io", ("v1",), "endpointslices"),
    Kind("VirtualService", "networking.istio.io", ISTIO_VERSIONS, "virtualservices", required=False),
    Kind("DestinationRule", "networking.istio.io", ISTIO_VERSIONS, "destinationrules", required=False),
    Kind("ServiceEntry", "networking.istio.io", ISTIO_VERSIONS, "serviceentries", required=False),
    Kind("Sidecar", "networking.istio.io", ISTIO_VERSIONS, "sidecars", required=False),
    Kind("PeerAuthentication", "security.istio.io", ISTIO_VERSIONS, "peerauthentications", required=False),
    Kind("AuthorizationPolicy", "security.istio.io", ISTIO_VERSIONS, "authorizationpolicies",
         required=False),
)


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A kubernetes ApiClient from ``kubeconfig`` (default: $KUBECONFIG), else the in-cluster
    service account."""
    from kubernetes import client, config

    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class KubeSource(Source):
    name = "kube"

    def __init__(self, client: Any, kinds: tuple[Kind, ...] = KINDS, retry: float | None = None,
                 missing_retry: float | None = None) -> None:
        super().__init__()
        self.client = client
        self.kinds = kinds
        self._stop = threading.Event()
        self._tried: set[str] = set()  # kinds listed, or found not served, at least once
        self.state: dict[str, str] = {k.kind: "not listed yet" for k in kinds}  # for logs and /ready
        self._retry, self._missing_retry = retry or RETRY, missing_retry or MISSING_RETRY
        self._watchers: list[ListWatch] = []

    def list_kind(self, k: Kind) -> list[dict[str, Any]]:
        """Every object of ``k`` across namespaces, once (no watch): for readers such as analyze.
        Raises when the kind is not served or cannot be listed."""
        return ListWatch(self.client, k, on_list=lambda items, version: None,
                         on_event=lambda event, obj: None, stop=self._stop).list()

    def waiting_for(self) -> list[str]:
        """The kinds readiness still waits for, with what happened to them."""
        return [f"{k.kind}: {self.state[k.kind]}" for k in self.kinds if k.kind not in self._tried]

    def _listed(self, k: Kind, items: list[dict[str, Any]], version: str,
                on_change: Callable[[], None]) -> None:
        self.state[k.kind] = f"listed at {k.api_version(version)}"
        others = [o for o in self._objects.values() if o.get("kind") != k.kind]
        changed = self.replace_all(others + items)
        self._tried_one(k.kind, changed, on_change)

    def _unavailable(self, k: Kind, why: str, missing: bool, on_change: Callable[[], None]) -> None:
        self.state[k.kind] = why
        changed = False
        if missing:  # its CRD is gone, and its objects with it; after an error, keep the last known
            changed = self.replace_all([o for o in self._objects.values() if o.get("kind") != k.kind])
        if not k.required:  # an optional kind that cannot be listed does not hold up readiness
            self._tried_one(k.kind, changed, on_change)

    def _tried_one(self, kind: str, changed: bool, on_change: Callable[[], None]) -> None:
        self._tried.add(kind)
        first = not self.ready
        self.ready = all(k.kind in self._tried for k in self.kinds)
        if self.ready and (changed or first):  # before then, a build would be partial
            on_change()

    def _apply(self, event: str, obj: dict[str, Any], on_change: Callable[[], None]) -> None:
        changed = self.delete(key_of(obj)) if event == "DELETED" else self.put(obj)
        if changed and self.ready:
            on_change()

    @staticmethod
    def _callback(later: Callable[..., None], fn: Callable[..., None], k: Kind,
                  on_change: Callable[[], None]) -> Callable[..., None]:
        """A watch thread's callback: ``fn(k, *args, on_change)`` on the event loop."""
        return lambda *args: later(fn, k, *args, on_change)

    async def run(self, on_change: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def later(fn: Callable[..., None], *args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)

        for k in self.kinds:
            w = ListWatch(self.client, k, stop=self._stop, on_list=self._callback(later, self._listed, k, on_change),
                          on_event=lambda event, obj: later(self._apply, event, obj, on_change),
                          on_list_failed=self._callback(later, self._unavailable, k, on_change),
                          retry=self._retry, missing_retry=self._missing_retry)
            self._watchers.append(w)
            threading.Thread(target=w.run, daemon=True, name=f"watch-{k.plural}").start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            for w in self._watchers:
                w.close()
