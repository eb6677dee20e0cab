"""Which AuthorizationPolicies apply to one workload (Istio's scoping rules).

A policy applies to a workload when it is in the workload's namespace or in the root namespace
(mesh-wide), and its selector matches the workload's labels (no selector: every workload
there), or one of its targetRefs is a Service in the policy's namespace that selects the
workload. Policies are returned sorted by name so equal inputs give equal snapshots.
"""

from __future__ import annotations

from control_plane.api import model
from control_plane.authz import AuthorizationPolicy
from control_plane.registry import Registry
from control_plane.resources import Workload, selector_matches, service_hostname


def _applies(reg: Registry, ap: AuthorizationPolicy, root: str, w: Workload | None,
             namespace: str) -> bool:
    if ap.namespace not in (namespace, root):
        return False
    labels = w.labels if w is not None else {}
    if ap.target_refs:
        for ref in ap.target_refs:
            if ref.kind != "Service" or ref.group:
                continue
            svc = reg.services.get(service_hostname(ref.name, ap.namespace))
            if (svc is not None and svc.selector and svc.namespace == namespace
                    and selector_matches(svc.selector, labels)):
                return True
        return False
    return ap.selector is None or selector_matches(ap.selector, labels)


def policies_for(reg: Registry, root: str, w: Workload | None,
                 namespace: str) -> tuple[model.AuthzPolicy, ...]:
    return tuple(sorted((ap.policy for ap in reg.authorization_policies
                         if _applies(reg, ap, root, w, namespace)), key=lambda p: p.name))
