"""RBAC grants exactly the verbs the control plane and the injector need, and nothing wider."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from chart_kit import NAMESPACE, Rendered

from injector.template import TRUST_CONFIGMAP

READ = {"get", "list", "watch"}
# (role kind, name) -> (apiGroup, resource) -> verbs allowed; anything not listed is refused.
ALLOWED: dict[tuple[str, str], dict[tuple[str, str], set[str]]] = {
    ("ClusterRole", "remora-control"): {
        ("", "services"): READ, ("", "pods"): READ, ("", "namespaces"): READ,
        ("", "serviceaccounts"): READ, ("discovery.k8s.io", "endpointslices"): READ,
        ("networking.istio.io", "virtualservices"): READ,
        ("networking.istio.io", "destinationrules"): READ,
        ("networking.istio.io", "serviceentries"): READ,
        ("networking.istio.io", "sidecars"): READ,
        ("security.istio.io", "peerauthentications"): READ,
        ("security.istio.io", "authorizationpolicies"): READ,
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("", "configmaps"): {"create", "patch", "get", "list", "watch"},
    },
    ("Role", "remora-control"): {("", "secrets"): {"get", "create", "update"}},
    ("ClusterRole", "remora-injector"): {("", "namespaces"): {"list", "watch"}},
}
# Verbs RBAC can restrict to one object by name: the chart must (resourceNames).
NAMED = {("", "configmaps"): {"get", "patch"}, ("", "secrets"): {"get", "update"}}


def rbac_violations(objects: list[dict[str, Any]], ca_secret: str) -> list[str]:
    """Every rule that grants more than ALLOWED, as a readable line."""
    found: list[str] = []
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    for role in roles:
        key = (role["kind"], role["metadata"]["name"])
        if key not in ALLOWED:
            found.append(f"unexpected {key}")
            continue
        if role["kind"] == "Role" and role["metadata"]["namespace"] != NAMESPACE:
            found.append(f"{key} outside {NAMESPACE}")
        for rule in role["rules"]:
            if "nonResourceURLs" in rule:
                found.append(f"{key} grants nonResourceURLs")
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if any("*" in item for item in rule.get(field, [])):
                    found.append(f"{key} has a wildcard in {field}: {rule[field]}")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    extra = set(rule["verbs"]) - ALLOWED[key].get((group, resource), set())
                    if extra:
                        found.append(f"{key} {group or 'core'}/{resource}: {sorted(extra)}")
                    named = set(rule["verbs"]) & NAMED.get((group, resource), set())
                    want = [TRUST_CONFIGMAP] if resource == "configmaps" else [ca_secret]
                    if named and rule.get("resourceNames") != want:
                        found.append(f"{key} {resource} {sorted(named)} not limited to {want}")
    return found


def _ca_secret(chart: Rendered) -> str:
    return chart.values.get("controlPlane", {}).get("ca", {}).get("existingSecret") or "remora-ca"


def test_rbac_grants_only_the_listed_verbs(chart: Rendered) -> None:
    assert rbac_violations(chart.objects, _ca_secret(chart)) == []
    granted = {(r["kind"], r["metadata"]["name"]) for r in chart.all("ClusterRole") + chart.all("Role")}
    assert granted == set(ALLOWED)


@pytest.mark.parametrize("change", ["verb", "resource", "group", "secrets-cluster-wide", "unnamed-get"])
def test_the_rbac_check_catches_widening(default_chart: Rendered, change: str) -> None:
    objects = copy.deepcopy(default_chart.objects)
    (injector_role,) = [o for o in objects if o["kind"] == "ClusterRole"
                        and o["metadata"]["name"] == "remora-injector"]
    (control_role,) = [o for o in objects if o["kind"] == "ClusterRole"
                       and o["metadata"]["name"] == "remora-control"]
    if change == "verb":
        injector_role["rules"][0]["verbs"] = ["*"]
    elif change == "resource":
        injector_role["rules"][0]["resources"].append("*")
    elif change == "group":
        injector_role["rules"][0]["apiGroups"] = ["*"]
    elif change == "secrets-cluster-wide":
        control_role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    else:
        control_role["rules"].append({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]})
    assert rbac_violations(objects, "remora-ca") != []


def test_bindings_give_each_deployment_its_own_role(chart: Rendered) -> None:
    for binding in chart.all("ClusterRoleBinding") + chart.all("RoleBinding"):
        name = binding["metadata"]["name"]
        role_kind = binding["roleRef"]["kind"]
        chart.get(role_kind, binding["roleRef"]["name"])
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
        chart.get("ServiceAccount", name)
        assert chart.get("Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"] == name


def test_the_injector_never_touches_pods(chart: Rendered) -> None:
    rules = chart.get("ClusterRole", "remora-injector")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]


def test_rbac_covers_every_kind_the_control_plane_watches(chart: Rendered) -> None:
    from control_plane.rootcert import CONFIGMAPS, NAMESPACES
    from control_plane.sources.kube import KINDS

    granted: dict[tuple[str, str], set[str]] = {}
    for rule in chart.get("ClusterRole", "remora-control")["rules"]:
        if rule.get("resourceNames"):
            continue  # list and watch cannot be limited by name
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    for kind in (*KINDS, NAMESPACES, CONFIGMAPS):
        assert {"list", "watch"} <= granted.get((kind.group, kind.plural), set()), kind
