"""A pod's telemetry identity (Istio's workload, app and version labels), from its manifest.

As Istio does, the workload is the pod's controller: a ReplicaSet's pod belongs to the
Deployment named like the ReplicaSet without its template hash; other controllers (StatefulSet,
DaemonSet, Job, the local cluster's Deployment) by their own name; a pod with no controller is
its own workload. app and version are the ``app``/``version`` labels (or their
``app.kubernetes.io/`` forms), "unknown" when absent, as in Istio's metric labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.api.model import WorkloadMeta

APP_LABELS = ("app", "app.kubernetes.io/name")
VERSION_LABELS = ("version", "app.kubernetes.io/version")


def workload_name(meta: Mapping[str, Any]) -> str:
    """The controller's name from a pod's metadata (ownerReferences), else the pod's name."""
    labels = meta.get("labels") or {}
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller", True) or not ref.get("name"):
            continue
        name = ref["name"]
        if ref.get("kind") == "ReplicaSet":
            h = labels.get("pod-template-hash")
            if h and name.endswith(f"-{h}"):
                return name[: -len(h) - 1]
            return name.rsplit("-", 1)[0] if "-" in name else name
        return name
    return meta.get("name", "")


def first_label(labels: Mapping[str, str], names: tuple[str, ...]) -> str:
    for n in names:
        if labels.get(n):
            return labels[n]
    return "unknown"


def meta_of(name: str, namespace: str, labels: Mapping[str, str], service_account: str,
            cluster: str = "Kubernetes") -> WorkloadMeta:
    return WorkloadMeta(
        name=name, namespace=namespace, app=first_label(labels, APP_LABELS),
        version=first_label(labels, VERSION_LABELS), service_account=service_account,
        cluster=cluster,
    )
