"""The chart renders valid Kubernetes objects, in the right namespace, with the configured image."""

from __future__ import annotations

import copy
import json
import logging
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_kit import CHART, CUSTOM_VALUES, NAMESPACE, Rendered, RenderError, render

from control_plane import __main__ as control_main
from control_plane.api import annotations as ann
from control_plane.api import model

K8S_VERSION = kubernetes_validate.latest_version()
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "MutatingWebhookConfiguration"}
ISTIO_KINDS = {
    "virtualservices.networking.istio.io": ("VirtualService", ["v1alpha3", "v1beta1", "v1"]),
    "destinationrules.networking.istio.io": ("DestinationRule", ["v1alpha3", "v1beta1", "v1"]),
    "serviceentries.networking.istio.io": ("ServiceEntry", ["v1alpha3", "v1beta1", "v1"]),
    "sidecars.networking.istio.io": ("Sidecar", ["v1alpha3", "v1beta1", "v1"]),
    "peerauthentications.security.istio.io": ("PeerAuthentication", ["v1beta1", "v1"]),
    "authorizationpolicies.security.istio.io": ("AuthorizationPolicy", ["v1beta1", "v1"]),
}


def test_every_object_passes_strict_validation(chart: Rendered) -> None:
    # CRDs are apiextensions.k8s.io/v1 objects the validator knows; no custom resource is rendered.
    assert all(o["apiVersion"].split("/")[0] not in ("networking.istio.io", "security.istio.io")
               for o in chart.objects)
    for obj in chart.objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(default_chart: Rendered) -> None:
    deployment = copy.deepcopy(default_chart.get("Deployment", "remora-control"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_objects_the_mesh_needs(default_chart: Rendered) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in default_chart.objects}
    assert names == {
        *(("CustomResourceDefinition", n) for n in ISTIO_KINDS),
        ("ConfigMap", "remora-mesh"), ("Secret", "remora-ca"), ("Secret", "remora-injector-tls"),
        *((kind, name) for name in ("remora-control", "remora-injector")
          for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                       "Service", "PodDisruptionBudget")),
        ("Role", "remora-control"), ("RoleBinding", "remora-control"),
        ("MutatingWebhookConfiguration", "remora-injector"),
    }


def test_namespaced_objects_go_to_the_release_namespace(chart: Rendered) -> None:
    for obj in chart.objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, obj["metadata"]["name"]
        else:
            assert namespace == NAMESPACE, (obj["kind"], obj["metadata"]["name"])


def test_one_image_for_every_container(chart: Rendered) -> None:
    image = chart.values.get("image", {})
    want = f"{image.get('repository', 'remora')}:{image.get('tag', '0.1.0')}"
    policy = image.get("pullPolicy", "IfNotPresent")
    for deployment in chart.all("Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert (c["image"], c["imagePullPolicy"]) == (want, policy)
    mesh = yaml.safe_load(chart.get("ConfigMap", "remora-mesh")["data"]["mesh"])
    assert (mesh["proxyImage"], mesh["imagePullPolicy"]) == (want, policy)


def test_replicas_follow_the_values(chart: Rendered) -> None:
    for name, key in (("remora-control", "controlPlane"), ("remora-injector", "injector")):
        want = chart.values.get(key, {}).get("replicas", 1)
        assert chart.get("Deployment", name)["spec"]["replicas"] == want


@pytest.mark.parametrize("values", [{}, CUSTOM_VALUES], ids=["default", "custom"])
def test_helm_lint_finds_no_error(values: dict) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize(("values", "namespace", "message"), [
    ({"injector": {"failurePolicy": "Sometimes"}}, NAMESPACE,
     "at '/injector/failurePolicy': value must be one of 'Fail', 'Ignore'"),
    ({"injector": {"failurPolicy": "Ignore"}}, NAMESPACE,
     "at '/injector': additional properties 'failurPolicy' not allowed"),
    ({"mesh": {"mtlsMode": "strict"}}, NAMESPACE,
     "at '/mesh/mtlsMode': value must be one of 'STRICT', 'PERMISSIVE', 'DISABLE'"),
    ({"controlPlane": {"certTTL": "1 day"}}, NAMESPACE, "at '/controlPlane/certTTL': '1 day' does not match"),
    ({}, "mesh", 'remora: install into the namespace remora-system, not "mesh"'),
    ({"injector": {"webhook": {"certSecret": "mine"}}}, NAMESPACE,
     "set injector.webhook.caBundle (base64 PEM) or injector.webhook.certManagerCertificate"),
], ids=["failure-policy", "misspelt-key", "mtls-mode", "cert-ttl", "namespace", "cert-without-ca"])
def test_bad_values_are_refused_with_a_message(values: dict, namespace: str, message: str) -> None:
    with pytest.raises(RenderError) as err:
        render(values, namespace=namespace)
    assert message in str(err.value)


def test_the_values_schema_accepts_what_the_programs_accept() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    mesh, control = schema["mesh"]["properties"], schema["controlPlane"]["properties"]
    assert mesh["logLevel"]["enum"] == list(ann.LOG_LEVELS)
    assert mesh["mtlsMode"]["enum"] == list(model.MTLS_MODES)
    assert mesh["drainSeconds"]["maximum"] == ann.MAX_DRAIN_SECONDS
    for level in control["logLevel"]["enum"]:  # remora-control passes it to logging
        assert isinstance(logging.getLevelName(level.upper()), int), level
    for ttl in ("24h", "90m", "20s", "1.5d"):
        assert re.match(control["certTTL"]["pattern"], ttl) and control_main.parse_ttl(ttl)


def test_crds_have_istio_group_versions_names_and_scope(default_chart: Rendered) -> None:
    for crd in default_chart.all("CustomResourceDefinition"):
        name = crd["metadata"]["name"]
        kind, versions = ISTIO_KINDS[name]
        plural, group = name.split(".", 1)
        spec = crd["spec"]
        assert (spec["group"], spec["scope"]) == (group, "Namespaced")
        assert spec["names"]["kind"] == kind and spec["names"]["plural"] == plural
        assert spec["names"]["singular"] == kind.lower()
        assert [v["name"] for v in spec["versions"]] == versions
        assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1"]
        assert all(v["served"] for v in spec["versions"])
        for v in spec["versions"]:
            props = v["schema"]["openAPIV3Schema"]["properties"]
            assert props["spec"]["x-kubernetes-preserve-unknown-fields"] is True
        # Uninstalling must not delete every VirtualService in the cluster.
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_can_be_left_out() -> None:
    assert [o for o in render({"crds": {"install": False}})
            if o["kind"] == "CustomResourceDefinition"] == []


def _leaf_paths(values: dict, prefix: str = "") -> list[str]:
    """values.yaml settings as dotted paths; resource blocks count as one setting."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not key.lower().endswith("resources"):
            paths += _leaf_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def _documented(path: str, rows: list[str]) -> bool:
    """A row names the setting, as itself, as `<component>.…`, or grouped: `a.b.x` / `y`."""
    for name in (path, re.sub(r"^(controlPlane|injector)\.", "<component>.", path)):
        parent, _, last = name.rpartition(".")
        if any(f"`{name}`" in row or (f"`{parent}." in row and f"`{last}`" in row) for row in rows):
            return True
    return False


def test_every_value_is_documented_in_install_md() -> None:
    rows = [line for line in (CHART.parents[1] / "docs" / "install.md").read_text().splitlines()
            if line.startswith("| `")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in _leaf_paths(values) if not _documented(path, rows)]
    assert missing == [], f"docs/install.md has no row for {missing}"
