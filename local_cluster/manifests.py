"""Reading manifests: which kinds the local cluster accepts, and Deployment -> Pods.

Pure functions; every error is a ``ManifestError`` whose message names the file, the object
and what to change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

# (apiVersion group, kind) -> namespaced? ; the group is apiVersion without its version.
KINDS: dict[tuple[str, str], bool] = {
    ("", "Namespace"): False,
    ("", "ServiceAccount"): True,
    ("", "ConfigMap"): True,
    ("", "Service"): True,
    ("", "Pod"): True,
    ("apps", "Deployment"): True,
    ("apps", "StatefulSet"): True,
    ("apps", "DaemonSet"): True,
    ("networking.istio.io", "VirtualService"): True,
    ("networking.istio.io", "DestinationRule"): True,
    ("security.istio.io", "PeerAuthentication"): True,
    ("security.istio.io", "AuthorizationPolicy"): True,
}
# Applied in this order so that what a pod needs (namespace, account, services) exists first.
ORDER: tuple[str, ...] = ("Namespace", "ServiceAccount", "ConfigMap", "Service", "DestinationRule",
         "VirtualService", "PeerAuthentication", "AuthorizationPolicy", "Pod", "Deployment", "StatefulSet", "DaemonSet")
# Kinds the control plane's files source reads (the rest stay in the local store only).
CONTROL_PLANE_KINDS = frozenset({"Namespace", "ServiceAccount", "Service", "Pod", "VirtualService",
                                 "DestinationRule", "PeerAuthentication", "AuthorizationPolicy"})
# Traffic-management kinds (ServiceEntry, Sidecar) and the Istio kinds the control plane only
# reports by name (so applying them is not refused here but said to have no effect there).
TRAFFIC_KINDS = {
    ("networking.istio.io", "ServiceEntry"): True, ("networking.istio.io", "Sidecar"): True,
    ("networking.istio.io", "Gateway"): True, ("networking.istio.io", "EnvoyFilter"): True,
    ("networking.istio.io", "WorkloadEntry"): True, ("networking.istio.io", "WorkloadGroup"): True,
    ("security.istio.io", "RequestAuthentication"): True, ("telemetry.istio.io", "Telemetry"): True,
    ("extensions.istio.io", "WasmPlugin"): True,
}
KINDS.update(TRAFFIC_KINDS)
ORDER = (*ORDER, *(k for _, k in TRAFFIC_KINDS))
CONTROL_PLANE_KINDS = CONTROL_PLANE_KINDS | {k for _, k in TRAFFIC_KINDS}
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63
DEFAULT_NAMESPACE = "default"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
HASH_LABEL = "pod-template-hash"  # which revision (template) a workload's pod was made from


class ManifestError(ValueError):
    """A manifest cannot be applied; the message says which one and why."""


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name); the namespace is "" for cluster-scoped kinds."""
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def describe(obj: dict[str, Any]) -> str:
    kind, ns, name = key(obj)
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def normalize(obj: Any, default_namespace: str, where: str) -> dict[str, Any]:
    """Check one object and fill in its namespace; raises ManifestError naming ``where``."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: not a Kubernetes object (a YAML mapping with kind)")
    api, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        raise ManifestError(f"{where}: apiVersion and kind are required")
    if kind == "List":
        raise ManifestError(f"{where}: kind List is not supported; write one document per object")
    namespaced = KINDS.get((group_of(api), kind))
    if namespaced is None:
        known = ", ".join(sorted(k for _, k in KINDS))
        raise ManifestError(f"{where}: {api} {kind} is not supported by the local cluster; "
                            f"supported kinds: {known}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ManifestError(f"{where}: {kind} needs metadata.name")
    name = meta["name"]
    if not _DNS1123.match(name) or len(name) > MAX_NAME:
        raise ManifestError(f"{where}: {kind} name {name!r} is not a DNS-1123 label "
                            f"(lower-case letters, digits and '-', at most {MAX_NAME} characters)")
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    if namespaced:
        meta["namespace"] = meta.get("namespace") or default_namespace
        if not _DNS1123.match(meta["namespace"]):
            raise ManifestError(f"{where}: namespace {meta['namespace']!r} is not a DNS-1123 label")
    else:
        meta.pop("namespace", None)
    _check_spec(obj, where)
    return obj


def _check_spec(obj: dict[str, Any], where: str) -> None:
    kind = obj["kind"]
    spec = obj.get("spec") or {}
    if kind == "Pod":
        check_pod_spec(spec, f"{where}: Pod {obj['metadata']['name']}")
    elif kind in WORKLOAD_KINDS:
        template = spec.get("template")
        if not isinstance(template, dict):
            raise ManifestError(f"{where}: {kind} {obj['metadata']['name']} needs spec.template")
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            raise ManifestError(f"{where}: spec.replicas must be a whole number >= 0, not {replicas!r}")
        check_pod_spec(template.get("spec") or {}, f"{where}: {kind} {obj['metadata']['name']}")
    elif kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            if not isinstance(port.get("port"), int):
                raise ManifestError(f"{where}: Service {obj['metadata']['name']} "
                                    f"spec.ports[{i}].port must be a number")


def check_pod_spec(spec: dict[str, Any], where: str) -> None:
    """Every container must have a command: the local cluster runs processes, not images."""
    containers = spec.get("containers")
    if not containers:
        raise ManifestError(f"{where}: spec.containers is empty")
    for c in [*(spec.get("initContainers") or []), *containers]:
        if not c.get("name"):
            raise ManifestError(f"{where}: every container needs a name")
        if not c.get("command") and not c.get("args"):
            raise ManifestError(
                f"{where}: container {c['name']!r} has no command: the local cluster ignores "
                "images and runs the command on this host; add spec.containers[].command")


def load_paths(paths: Iterable[str | Path], default_namespace: str) -> list[dict[str, Any]]:
    """Objects from files and directories (*.yaml, *.yml, *.json, sorted); '-' is stdin."""
    out: list[dict[str, Any]] = []
    for raw in paths:
        for path in _expand(Path(raw)):
            out += load_text(_read(path), str(path), default_namespace)
    return out


def _expand(path: Path) -> list[Path]:
    if str(path) == "-":
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        if not files:
            raise ManifestError(f"{path}: no .yaml, .yml or .json files in this directory")
        return files
    if not path.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return [path]


def _read(path: Path) -> str:
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    try:
        return path.read_text()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None


def load_text(text: str, where: str, default_namespace: str) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ManifestError(f"{where}: not valid YAML: {e}") from None
    return [normalize(d, default_namespace, f"{where} (document {i + 1})")
            for i, d in enumerate(docs) if d is not None]


def sort_for_apply(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objs, key=lambda o: ORDER.index(o["kind"]))


def template_hash(template: dict[str, Any]) -> str:
    """Like Kubernetes' pod-template-hash: changes when the template changes."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def pod_for(workload: dict[str, Any], name: str, template_hash: str) -> dict[str, Any]:
    """A pod from a workload's template, owned by it (what its ReplicaSet would create)."""
    meta = workload["metadata"]
    template = (workload.get("spec") or {}).get("template") or {}
    tmeta = copy.deepcopy(template.get("metadata") or {})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**tmeta, "name": name, "namespace": meta["namespace"],
                     "labels": {**(tmeta.get("labels") or {}), HASH_LABEL: template_hash},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": workload["kind"],
                                          "name": meta["name"], "controller": True}]},
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


def deployment_pods(dep: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods a Deployment's ReplicaSet would create: ``<name>-<hash>-<index>``."""
    h = template_hash(dep["spec"]["template"])
    return [pod_for(dep, f"{dep['metadata']['name']}-{h}-{i}", h)
            for i in range((dep.get("spec") or {}).get("replicas", 1))]


def owner_ref(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the workload that controls ``pod``, if any."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") in WORKLOAD_KINDS:
            return ref["kind"], ref.get("name", "")
    return None


def owner(pod: dict[str, Any]) -> str | None:
    """The name of the workload that owns ``pod``, if any."""
    ref = owner_ref(pod)
    return ref[1] if ref else None


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's equality selector; an empty selector selects nothing (as in Kubernetes)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
