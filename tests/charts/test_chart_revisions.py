"""Two revisions of the chart side by side: the default install and ``revision: canary``
(a second Helm release). Their objects must not collide, both validate strictly, and across
both webhook configurations every Pod CREATE reaches at most one injector: the one whose own
decision (injector/admission.py with that revision) injects or denies it."""

from __future__ import annotations

import itertools
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_kit import NAMESPACE, Rendered, render, selector_matches

from control_plane.api import annotations as ann
from injector import meshconfig
from injector.admission import SKIPPED, decide

CANARY = {"revision": "canary", "image": {"tag": "0.2.0"}}


@pytest.fixture(scope="module")
def both() -> dict[str, Rendered]:
    return {"default": Rendered(render({}), {}),
            "canary": Rendered(render(CANARY, release="remora-canary"), CANARY)}


def _key(o: dict[str, Any]) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def test_names_do_not_collide_and_both_validate(both: dict[str, Rendered]) -> None:
    default, canary = ({_key(o) for o in r.objects} for r in both.values())
    assert default & canary == set()
    for r in both.values():
        for obj in r.objects:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    names = {name for kind, _, name in canary}
    assert {"remora-control-canary", "remora-injector-canary", "remora-mesh-canary",
            "remora-injector-tls-canary"} <= names
    # Shared with the default revision, never rendered twice: the CRDs and the mesh root CA.
    assert not [k for k in canary if k[0] == "CustomResourceDefinition" or k[2] == "remora-ca"]


def test_canary_points_its_proxies_at_its_own_control_plane(both: dict[str, Rendered]) -> None:
    canary = both["canary"]
    mesh = meshconfig.from_dict(yaml.safe_load(canary.get("ConfigMap", "remora-mesh-canary")["data"]["mesh"]))
    assert (mesh.revision, mesh.proxy_version) == ("canary", "0.2.0")
    assert mesh.control_plane_address == f"remora-control-canary.{NAMESPACE}.svc:15012"
    (c,) = canary.get("Deployment", "remora-control-canary")["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--revision") + 1] == "canary"  # adds the name to its certificate
    svc = canary.get("Service", "remora-control-canary")
    dep = canary.get("Deployment", "remora-control-canary")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"]["remora.dev/rev"] == "canary"
    # The canary's pods are not selected by the default revision's Service.
    default_sel = both["default"].get("Service", "remora-control")["spec"]["selector"]
    assert not selector_matches({"matchLabels": default_sel}, dep["spec"]["template"]["metadata"]["labels"])


NAMESPACES: dict[str, dict[str, str]] = {
    "plain": {},
    "shop": {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE},
    "moved": {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE, ann.REV_LABEL: "canary"},
    "canary-only": {ann.REV_LABEL: "canary"},
    "explicit-default": {ann.REV_LABEL: "default"},
    "gone": {ann.REV_LABEL: "old"},
}
PODS: list[dict[str, str]] = [
    {}, {ann.INJECT_LABEL: "true"}, {ann.INJECT_LABEL: "false"}, {ann.REV_LABEL: "canary"},
    {ann.REV_LABEL: "default"}, {ann.REV_LABEL: "canary", ann.INJECT_LABEL: "false"},
]
CASES = list(itertools.product(NAMESPACES, PODS))


@pytest.mark.parametrize(("namespace", "labels"), CASES,
                         ids=[f"{n}-{'-'.join(lbl.values()) or 'none'}" for n, lbl in CASES])
def test_at_most_one_revision_reviews_a_pod(both: dict[str, Rendered], namespace: str,
                                            labels: dict[str, str]) -> None:
    ns_labels = {**NAMESPACES[namespace], "kubernetes.io/metadata.name": namespace}
    called = []
    for rev, chart in both.items():
        (config,) = chart.all("MutatingWebhookConfiguration")
        called += [(rev, h["name"]) for h in config["webhooks"]
                   if selector_matches(h["namespaceSelector"], ns_labels)
                   and selector_matches(h["objectSelector"], labels)]
    assert len(called) <= 1, f"two webhooks review this pod: {called}"
    pod = {"metadata": {"name": "p", "labels": dict(labels)},
           "spec": {"containers": [{"name": "app", "image": "app"}]}}
    acting = [rev for rev in both
              if decide(pod, namespace, NAMESPACES[namespace], meshconfig.MeshConfig(revision=rev)).result
              != SKIPPED]
    assert [rev for rev, _ in called] == acting
