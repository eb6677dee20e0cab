"""The chart rendered against a live cluster (helm-python-sdk's cluster-aware render, whose
``lookup`` asks kmock): Istio's CRDs, or anyone else's, are never rendered (so never taken over);
absent ones and this release's own are; the CA Secret already in the cluster is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from chart_kit import CHART, NAMESPACE, RELEASE
from kube_kit import CORE, kmock_api, resource

CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"


def crd(name: str, release: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    annotations = {} if release is None else {"meta.helm.sh/release-name": release,
                                              "meta.helm.sh/release-namespace": namespace}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "annotations": annotations}}


def render_live(kubeconfig: str) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart, \
            helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE) as cfg:
        out = cfg.render(chart, {}, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


async def test_crds_are_installed_only_where_absent_or_ours(tmp_path: Path) -> None:
    resources = {**CORE, CRDS: resource("CustomResourceDefinition", False)}
    async with kmock_api(tmp_path, resources) as api:
        api.add(CRDS, crd("virtualservices.networking.istio.io", "istio-base", "istio-system"))  # Istio's
        api.add(CRDS, crd("destinationrules.networking.istio.io"))  # kubectl apply'd, no owner
        api.add(CRDS, crd("peerauthentications.security.istio.io", RELEASE, NAMESPACE))  # ours
        # authorizationpolicies, serviceentries, sidecars: absent
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": "remora-ca", "namespace": NAMESPACE},
                  "data": {"root-cert.pem": "Uk9PVA==", "ca-cert.pem": "Uk9PVA==", "ca-key.pem": "S0VZ"}}
        api.add("v1/secrets", secret)
        objects = await asyncio.to_thread(render_live, api.kubeconfig)
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
    assert rendered == {"peerauthentications.security.istio.io", "authorizationpolicies.security.istio.io",
                        "serviceentries.networking.istio.io", "sidecars.networking.istio.io"}
    (ca,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "remora-ca"]
    assert ca["data"] == secret["data"]  # the live CA, not a new one


async def test_another_release_of_the_same_name_elsewhere_is_not_ours(tmp_path: Path) -> None:
    resources = {**CORE, CRDS: resource("CustomResourceDefinition", False)}
    async with kmock_api(tmp_path, resources) as api:
        api.add(CRDS, crd("virtualservices.networking.istio.io", RELEASE, "other-namespace"))
        objects = await asyncio.to_thread(render_live, api.kubeconfig)
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
    assert "virtualservices.networking.istio.io" not in rendered and len(rendered) == 5  # the other 5 kinds
