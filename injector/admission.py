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


@dataclass
class Outcome:
    result: str  # INJECTED, SKIPPED or DENIED
    reason: str = ""  # skip reason (a metric label) or "invalid-annotation"
    message: str = ""  # deny message, shown to the user by the API server
    pod: dict[str, Any] | None = None  # the injected pod
    warnings: list[str] = field(default_factory=list)


def skip_reason(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str]) -> str | None:
    """Why the pod gets no sidecar, or None when it should get one.

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
    wanted = ann.parse_inject_label((meta.get("labels") or {}).get(ann.INJECT_LABEL))
    if wanted is False:
        return "pod-disabled"
    if wanted is None and namespace_labels.get(ann.INJECT_LABEL) != ann.NAMESPACE_INJECT_VALUE:
        return "not-enabled"
    return None


def decide(
    pod: dict[str, Any], namespace: str, namespace_labels: Mapping[str, str] | None, mesh: MeshConfig
) -> Outcome:
    """``namespace_labels`` None means the namespace is not known (yet). If the answer depends
    on it, fail closed, so no pod starts without its sidecar because a watch lags (the pod's
    controller retries)."""
    try:
        reason = skip_reason(pod, namespace, namespace_labels or {})
        if reason == "not-enabled" and namespace_labels is None:
            return Outcome(DENIED, reason="namespace-unknown", message=(
                f"namespace {namespace!r} is not known to remora-injector yet (its namespace "
                "watch is starting or lagging); retry in a few seconds"))
        if reason is not None:
            return Outcome(SKIPPED, reason=reason)
        injected = template.inject_pod(pod, mesh)
    except ValueError as e:
        return Outcome(DENIED, reason="invalid", message=str(e))
    except (TypeError, AttributeError, KeyError) as e:
        # A shape injector.reviews does not check: deny with what broke, never a 500.
        return Outcome(DENIED, reason="invalid", message=f"malformed pod: {type(e).__name__}: {e}")
    unknown = ann.unknown_annotations((pod.get("metadata") or {}).get("annotations"))
    warnings = [f"unknown annotation {k} is ignored; see docs/injection.md" for k in unknown]
    return Outcome(INJECTED, pod=injected, warnings=warnings)
