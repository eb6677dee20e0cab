"""kmock (a Kubernetes API emulator) as the tests use it: resources, a kubeconfig, a running server.

Importing this module patches kmock 0.8's path parser so that /api/v1/namespaces[/NAME] is read
as the cluster-scoped Namespaces resource (kmock reads it as a namespace with no resource, and
cannot list Namespaces at all).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import yaml
from kmock._internal import parsing

VERBS = {"list", "watch", "get", "create", "update", "patch", "delete"}


def _parse_path(path: str, _original=parsing.parse_path) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None)
    return _original(path)


if getattr(parsing.parse_path, "__name__", "") != "_parse_path":
    parsing.parse_path = _parse_path


def resource(kind: str, namespaced: bool = True) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS)


CORE: dict[str, kmock.ResourceInfo] = {
    "v1/namespaces": resource("Namespace", False),
    "v1/configmaps": resource("ConfigMap"),
    "v1/secrets": resource("Secret"),
    "v1/services": resource("Service"),
    "v1/pods": resource("Pod"),
    "discovery.k8s.io/v1/endpointslices": resource("EndpointSlice"),
}


def write_kubeconfig(path: Path, url: str, user: str = "test", token: str = "test") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": user}}],
    }))
    return path


@dataclass
class Api:
    emulator: kmock.KubernetesEmulator
    url: str
    kubeconfig: str

    def add(self, path: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` under resource ``path`` (e.g. "v1/namespaces") as if it had been created."""
        meta = obj["metadata"]
        self.emulator.objects[path, meta.get("namespace"), meta["name"]] = obj

    def get(self, path: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object as plain JSON, or None when absent or deleted."""
        try:
            obj = self.emulator.objects[path, namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else json.loads(json.dumps(obj.raw, default=dict))


@contextlib.asynccontextmanager
async def kmock_api(tmp_path: Path, resources: dict[str, kmock.ResourceInfo],
                    namespaces: Iterable[str] = ()) -> AsyncIterator[Api]:
    """A kmock server serving ``resources`` (and the Namespaces named), on this event loop."""
    emulator = kmock.KubernetesEmulator()
    for path, info in resources.items():
        emulator.resources[path] = info
    async with emulator, kmock.Server(emulator):
        url = str(emulator.url).rstrip("/")
        api = Api(emulator, url, str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        for ns in namespaces:
            api.add("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield api
