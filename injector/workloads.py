"""Where the pod template lives in each workload kind, for manual injection (``remoractl inject``)."""

from __future__ import annotations

import copy
from typing import Any

from control_plane.api import annotations as ann
from injector import admission, template
from injector.meshconfig import MeshConfig

# kind -> keys from the object down to its pod template ("Pod" is the pod itself).
POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod (template) inside a workload object, or None for other kinds."""
    path = POD_PATHS.get(obj.get("kind", "")) if isinstance(obj, dict) else None
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def skip_reason(pod: dict[str, Any], namespace: str) -> str | None:
    """Manual injection ignores namespace labels (you asked for it) but not the pod's opt-outs."""
    enabled = {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE}
    return admission.skip_reason(pod, namespace, namespace_labels=enabled)


def inject_object(obj: dict[str, Any], mesh: MeshConfig) -> tuple[dict[str, Any], str | None]:
    """Return (object with its pod template injected, skip reason or None).

    Unrelated kinds come back as they are with reason "not-a-workload". Raises ValueError for
    invalid annotations, naming the annotation.
    """
    pod = pod_of(obj)
    if pod is None:
        return obj, "not-a-workload"
    reason = skip_reason(pod, (obj.get("metadata") or {}).get("namespace") or "")
    if reason is not None:
        return obj, reason
    new = copy.deepcopy(obj)
    path = POD_PATHS[obj["kind"]]
    injected = template.inject_pod(pod, mesh)
    if not path:
        return injected, None
    parent: dict[str, Any] = new
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = injected
    return new, None
