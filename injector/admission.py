"""One admission decision for one pod: inject, skip (with a reason) or deny (with a message).

Shared by the kopf handler and the standalone webhook server; no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.api import annotations as ann
from injector import template
from injector.meshconfig import MeshConfig

NEVER_NAMESPACES = frozenset({"kube-system", "kube-public"})

INJECTED, SKIPPED, DENIED = "injected", "skipped", "denied"

# Another mesh's sidecar: (mesh, its proxy container, the annotation its injector records).
# Two proxies in one pod would both capture its traffic; the first mesh keeps the pod.
OTHER_MESHES = (
    ("Istio", "istio-proxy", "sidecar.istio.io/status"),
    ("Linkerd", "linkerd-proxy", "linkerd.io/proxy-version"),
)


@dataclass
class Outcome:
    result: str  # INJECTED, SKIPPED or DENIED
    reason: str = ""  # skip reason (a metric label) or "invalid-annotation"
    message: str = ""  # deny message, shown to the user by the API server
    pod: dict[str, Any] | None = None  # the injected pod
    warnings: list[str] = field(default_factory=list)


def selected_revision(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> str | None:
    """The revision a pod asks for: its own ``remora.dev/rev``, else its namespace's; None: none."""
    return pod_labels.get(ann.REV_LABEL) or namespace_labels.get(ann.REV_LABEL) or None


def skip_reason(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str],
                revision: str = ann.DEFAULT_REVISION) -> str | None:
    """Why the pod gets no sidecar from the injector of ``revision``, or None when it should.

    A ``remora.dev/rev`` label (pod, else namespace) both enables injection and picks the
    revision; without one, ``remora.dev/inject`` enables it and the default revision serves it.
    Raises ValueError when the pod's ``remora.dev/inject`` label is neither "true" nor "false".
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if namespace in NEVER_NAMESPACES:
        return "system-namespace"
    if spec.get("hostNetwork"):
        return "host-network"  # its iptables rules would capture the node's traffic
    if template.is_injected(dict(pod)):
        return "already-injected"
    labels = meta.get("labels") or {}
    wanted = ann.parse_inject_label(labels.get(ann.INJECT_LABEL))
    if wanted is False:
        return "pod-disabled"
    rev = selected_revision(labels, namespace_labels)
    if rev is None and wanted is None and namespace_labels.get(ann.INJECT_LABEL) != ann.NAMESPACE_INJECT_VALUE:
        return "not-enabled"
    if (rev or ann.DEFAULT_REVISION) != revision:
        return "other-revision"  # that revision's injector serves it
    return None


def other_mesh(pod: Mapping[str, Any]) -> str | None:
    """Why the pod already belongs to another mesh (a sentence), or None."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    for mesh, container, annotation in OTHER_MESHES:
        found = [f"container {container}"] if container in names else []
        found += [f"annotation {annotation}"] if annotation in annotations else []
        if found:
            return (f"not injected: the pod already carries {mesh}'s sidecar ({' and '.join(found)}); "
                    f"remove it, or label the pod {ann.INJECT_LABEL}: \"false\" to silence this")
    return None


def decide(
    pod: dict[str, Any], namespace: str, namespace_labels: Mapping[str, str] | None, mesh: MeshConfig
) -> Outcome:
    """``namespace_labels`` None means the namespace is not known (yet). If the answer depends
    on it, fail closed, so no pod starts without its sidecar because a watch lags (the pod's
    controller retries)."""
    try:
        reason = skip_reason(pod, namespace, namespace_labels or {}, mesh.revision)
        pod_rev = ((pod.get("metadata") or {}).get("labels") or {}).get(ann.REV_LABEL)
        if reason in ("not-enabled", "other-revision") and namespace_labels is None and not pod_rev:
            return Outcome(DENIED, reason="namespace-unknown", message=(
                f"namespace {namespace!r} is not known to remora-injector yet (its namespace "
                "watch is starting or lagging); retry in a few seconds"))
        if reason is not None:
            return Outcome(SKIPPED, reason=reason)
        taken = other_mesh(pod)
        if taken:  # allowed unchanged, and the user is told why (an admission warning)
            return Outcome(SKIPPED, reason="other-mesh", message=taken, warnings=[taken])
        injected = template.inject_pod(pod, mesh)
    except ValueError as e:
        return Outcome(DENIED, reason="invalid", message=str(e))
    except (TypeError, AttributeError, KeyError) as e:
        # A shape injector.reviews does not check: deny with what broke, never a 500.
        return Outcome(DENIED, reason="invalid", message=f"malformed pod: {type(e).__name__}: {e}")
    unknown = ann.unknown_annotations((pod.get("metadata") or {}).get("annotations"))
    warnings = [f"unknown annotation {k} is ignored; see docs/injection.md" for k in unknown]
    return Outcome(INJECTED, pod=injected, warnings=warnings)
