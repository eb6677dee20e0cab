"""The same objects watched on a Kubernetes API server (the kubernetes client: list, then watch).

One thread per kind runs the client's blocking list+watch and hands each event to the event
loop; a watch that ends or fails is re-listed after a short pause, so a restarted API server or
an expired resourceVersion heals by itself. Endpoints come from EndpointSlices when the
service has any, else from the pods its selector matches (the builder decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.resources import key_of
from control_plane.sources.base import Source

log = logging.getLogger("remora.control.kube")
RETRY = 2.0
WATCH_TIMEOUT = 300  # the server ends each watch after this; we re-list


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    group: str = ""  # "" for the core API

    @property
    def version(self) -> str:
        return self.api_version.split("/")[-1]


KINDS = (
    Kind("Service", "v1", "services"),
    Kind("Pod", "v1", "pods"),
    Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", "discovery.k8s.io"),
    Kind("VirtualService", "networking.istio.io/v1", "virtualservices", "networking.istio.io"),
    Kind("DestinationRule", "networking.istio.io/v1", "destinationrules", "networking.istio.io"),
    Kind("ServiceEntry", "networking.istio.io/v1", "serviceentries", "networking.istio.io"),
    Kind("Sidecar", "networking.istio.io/v1", "sidecars", "networking.istio.io"),
    Kind("PeerAuthentication", "security.istio.io/v1", "peerauthentications", "security.istio.io"),
    Kind("AuthorizationPolicy", "security.istio.io/v1", "authorizationpolicies", "security.istio.io"),
)


def api_client(kubeconfig: str | None = None) -> Any:
    """A kubernetes ApiClient from ``kubeconfig``, else the in-cluster service account."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class KubeSource(Source):
    name = "kube"

    def __init__(self, client: Any, kinds: tuple[Kind, ...] = KINDS) -> None:
        super().__init__()
        self.client = client
        self.kinds = kinds
        self._stop = threading.Event()
        self._listed: set[str] = set()
        self._open: set[Any] = set()  # watch responses, closed on stop to unblock their threads

    def _path(self, k: Kind) -> str:
        return f"/api/{k.version}/{k.plural}" if not k.group else f"/apis/{k.api_version}/{k.plural}"

    def _get(self, k: Kind, **query: Any) -> Any:
        """GET the list (or a watch stream when watch=True) for all namespaces: a urllib3 response."""
        params = [(n, v) for n, v in query.items() if v is not None]
        method, url, headers, body, post = self.client.param_serialize(
            "GET", self._path(k), query_params=params, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(method, url, header_params=headers,
                                    _request_timeout=WATCH_TIMEOUT + 30).response
        if resp.status >= 400:
            text = resp.data.decode(errors="replace")[:300]
            resp.release_conn()
            raise RuntimeError(f"GET {self._path(k)}: HTTP {resp.status}: {text}")
        return resp

    def _list(self, k: Kind) -> tuple[list[dict[str, Any]], str | None]:
        resp = self._get(k)
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = [{"apiVersion": k.api_version, "kind": k.kind, **item} for item in body.get("items") or []]
        return items, (body.get("metadata") or {}).get("resourceVersion")

    def _watch(self, k: Kind, rv: str | None, emit: Callable[[str, dict[str, Any]], None]) -> None:
        resp = self._get(k, watch="true", resourceVersion=rv, timeoutSeconds=WATCH_TIMEOUT)
        self._open.add(resp)
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                emit(event.get("type", ""), {"apiVersion": k.api_version, "kind": k.kind, **obj})
        finally:
            self._open.discard(resp)
            resp.release_conn()

    def _thread(self, k: Kind, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]) -> None:
        def emit(kind: str, obj: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self._apply, kind, obj, on_change)

        while not self._stop.is_set():
            try:
                items, rv = self._list(k)
                loop.call_soon_threadsafe(self._relisted, k, items, on_change)
                self._watch(k, rv, emit)
            except Exception as exc:  # the API server went away, a 410 Gone, a bad response...
                log.warning("%s: list/watch failed, retrying in %.0fs: %s", k.plural, RETRY, exc)
            self._stop.wait(RETRY)

    def _relisted(self, k: Kind, items: list[dict[str, Any]], on_change: Callable[[], None]) -> None:
        others = [o for o in self._objects.values() if o.get("kind") != k.kind]
        changed = self.replace_all(others + items)
        first = not self.ready
        self._listed.add(k.kind)
        self.ready = len(self._listed) == len(self.kinds)
        if self.ready and (changed or first):  # before every kind is listed, a build is partial
            on_change()

    def _apply(self, event: str, obj: dict[str, Any], on_change: Callable[[], None]) -> None:
        changed = self.delete(key_of(obj)) if event == "DELETED" else self.put(obj)
        if changed and self.ready:  # before every kind is listed, a build would be partial
            on_change()

    async def run(self, on_change: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        threads = [threading.Thread(target=self._thread, args=(k, loop, on_change), daemon=True,
                                    name=f"watch-{k.plural}") for k in self.kinds]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            for resp in list(self._open):
                with contextlib.suppress(Exception):
                    (getattr(resp, "shutdown", None) or resp.close)()


def _lines(resp: Any):
    """Newline-delimited JSON events from a streaming urllib3 response."""
    buf = b""
    for chunk in resp.stream(4096):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()
    if buf.strip():
        yield buf.decode()
