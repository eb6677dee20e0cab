"""The pure pieces: annotation parsers, mesh config, the pod template and the decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import injector_pods as pods
import pytest
import yaml

from control_plane.api import annotations as ann
from control_plane.api.version import version
from injector import admission, meshconfig
from injector.docs import readme_table
from injector.meshconfig import MeshConfig, MeshConfigError
from injector.template import inject_pod, json_patch, template_hash

REPO = Path(__file__).resolve().parents[2]
BAD_VALUES = {
    "proxy-cpu": "0", "proxy-cpu-limit": "2 cores", "proxy-memory": "64MB",
    "proxy-memory-limit": "-1Gi", "proxy-image": "Not An Image", "log-level": "verbose",
    "include-inbound-ports": "80,*", "exclude-inbound-ports": "70000",
    "include-outbound-ports": "http", "exclude-outbound-ports": "1-1024",
    "exclude-outbound-cidrs": "10.0.0.0/33", "include-outbound-cidrs": "example.com",
    "opaque-ports": "3306,,6379", "native-sidecar": "yes", "hold-application": "1",
    "rewrite-probes": "True", "drain-seconds": "3601", "dns-capture": "off", "merge-metrics": "yes",
    "trace-sampling": "101", "access-log": "TEXT",
}


def simple_pod(**annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop",
                         "annotations": {ann.PREFIX + k: v for k, v in annotations.items()}},
            "spec": {"containers": [{"name": "app", "image": "a:1",
                                     "readinessProbe": {"httpGet": {"path": "/r", "port": 8080}}}]}}


def proxy_of(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"]
                if c["name"] == "remora-proxy")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("spec", ann.ANNOTATIONS, ids=lambda a: a.name)
def test_each_annotation_accepts_its_example_and_names_a_bad_value(spec: ann.Annotation) -> None:
    spec.parse(spec.example)
    bad = BAD_VALUES[spec.name]
    with pytest.raises(ValueError) as e:
        ann.parse_annotations({spec.key: bad})
    message = str(e.value)
    assert spec.key in message and repr(bad) in message and "accepted:" in message


def test_security_contexts_and_contract_values() -> None:
    pod = inject_pod(simple_pod(), MeshConfig())
    init, proxy = pod["spec"]["initContainers"]
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["command"] == ["remora-init", "--proxy-uid", "1337", "--proxy-gid", "1337",
                               "--inbound-port", "15006", "--outbound-port", "15001",
                               "--dns-capture", "true"]
    sc = proxy["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"], sc["readOnlyRootFilesystem"]) == (
        1337, 1337, True, True)
    assert sc["capabilities"] == {"drop": ["ALL"]} and proxy["command"] == ["remora-proxy"]
    env = env_of(proxy)
    assert env["POD_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert env["SERVICE_ACCOUNT"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    assert env["REMORA_CONTROL_PLANE"] == "remora-control.remora-system.svc:15012"
    assert env["REMORA_TOKEN_FILE"] == "/var/run/secrets/remora/tokens/remora-token"
    assert env["REMORA_TRUST_ROOT"] == "/var/run/secrets/remora/trust/root-cert.pem"
    assert (env["REMORA_WORKDIR"], env["REMORA_LOG_LEVEL"], env["REMORA_DRAIN_SECONDS"]) == (
        "/var/run/remora", "info", "5")
    assert "REMORA_OPAQUE_PORTS" not in env
    assert env["REMORA_DNS_CAPTURE"] == "true"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    token = volumes["remora-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert (token["audience"], token["path"]) == ("remora-ca", "remora-token")
    assert volumes["remora-trust"]["configMap"]["name"] == "remora-ca-root-cert"
    assert volumes["remora-workdir"]["emptyDir"] == {"medium": "Memory"}
    assert proxy["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"},
                                  "limits": {"cpu": "2", "memory": "256Mi"}}


def test_injection_is_idempotent_and_pure() -> None:
    pod = pods.deployment_pod()
    original = json.dumps(pod, sort_keys=True)
    once = inject_pod(pod, MeshConfig())
    assert json.dumps(pod, sort_keys=True) == original  # the input is not touched
    assert inject_pod(once, MeshConfig()) == once
    assert json_patch(once, inject_pod(once, MeshConfig())) == []


def test_probe_rewrite_and_hold_can_be_turned_off() -> None:
    pod = inject_pod(simple_pod(**{"rewrite-probes": "false", "native-sidecar": "false",
                                   "hold-application": "false"}), MeshConfig())
    proxy, app = pod["spec"]["containers"]
    assert app["readinessProbe"] == {"httpGet": {"path": "/r", "port": 8080}}
    assert env_of(proxy)["REMORA_APP_PROBES"] == "{}"
    assert "lifecycle" not in proxy and "startupProbe" not in proxy


def test_mesh_default_can_turn_native_sidecar_off_and_a_pod_back_on() -> None:
    mesh = MeshConfig(native_sidecar=False)
    assert inject_pod(simple_pod(), mesh)["spec"]["containers"][0]["name"] == "remora-proxy"
    back = inject_pod(simple_pod(**{"native-sidecar": "true"}), mesh)
    assert [c["name"] for c in back["spec"]["initContainers"]] == ["remora-init", "remora-proxy"]


def test_template_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="remora.dev/proxy-memory-limit: memory request '64Mi' is above"):
        inject_pod(simple_pod(**{"proxy-memory-limit": "32Mi"}), MeshConfig())
    with pytest.raises(ValueError, match="both list port 443"):
        inject_pod(simple_pod(**{"include-outbound-ports": "443", "exclude-outbound-ports": "443,80"}),
                   MeshConfig())
    pod = simple_pod()
    pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "web"
    with pytest.raises(ValueError, match="port 'web' is neither a number nor the name"):
        inject_pod(pod, MeshConfig())


def test_user_default_container_is_kept_and_ipv6_flag_follows_the_mesh() -> None:
    pod = simple_pod()
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "other"
    out = inject_pod(pod, MeshConfig(ipv6=False))
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "other"
    assert out["spec"]["initContainers"][0]["command"][-1] == "--no-ipv6"


def test_status_annotation_records_what_was_injected() -> None:
    mesh = MeshConfig()
    status = json.loads(inject_pod(simple_pod(), mesh)["metadata"]["annotations"]["remora.dev/status"])
    assert status == {"initContainers": ["remora-init", "remora-proxy"], "containers": [],
                      "volumes": ["remora-workdir", "remora-token", "remora-trust"],
                      "proxyVersion": version(), "templateHash": template_hash(mesh),
                      "revision": "default", "appProbes": ["/app-health/app/readyz"]}
    assert template_hash(MeshConfig(drain_seconds=9)) != template_hash(mesh)
    # The proxy is told its template hash, to report it in its discovery hello.
    env = {e["name"]: e.get("value") for e in inject_pod(simple_pod(), mesh)["spec"]["initContainers"][1]["env"]}
    assert env["REMORA_TEMPLATE_HASH"] == template_hash(mesh)


@pytest.mark.parametrize(("namespace", "ns_labels", "pod_label", "expected"), [
    ("shop", {"remora.dev/inject": "enabled"}, None, None),
    ("shop", {"remora.dev/inject": "enabled"}, "false", "pod-disabled"),
    ("plain", {}, "true", None),
    ("plain", {"remora.dev/inject": "disabled"}, None, "not-enabled"),
    ("kube-public", {"remora.dev/inject": "enabled"}, "true", "system-namespace"),
])
def test_decision(namespace: str, ns_labels: dict[str, str], pod_label: str | None,
                  expected: str | None) -> None:
    pod = simple_pod()
    pod["metadata"]["labels"] = {} if pod_label is None else {"remora.dev/inject": pod_label}
    assert admission.skip_reason(pod, namespace, ns_labels) == expected


def test_bad_inject_label_denies_and_unknown_annotation_warns() -> None:
    pod = simple_pod(**{"proxy-cpus": "1"})
    pod["metadata"]["labels"] = {"remora.dev/inject": "yes"}
    outcome = admission.decide(pod, "shop", {}, MeshConfig())
    assert outcome.result == admission.DENIED and "label remora.dev/inject" in outcome.message
    pod["metadata"]["labels"] = {"remora.dev/inject": "true"}
    outcome = admission.decide(pod, "shop", {}, MeshConfig())
    assert outcome.result == admission.INJECTED
    assert outcome.warnings == ["unknown annotation remora.dev/proxy-cpus is ignored; see docs/injection.md"]


def test_mesh_config_file_and_configmap(tmp_path: Path) -> None:
    plain = tmp_path / "mesh.yaml"
    plain.write_text("proxyImage: r.example/remora:2\nnativeSidecar: false\ntrustDomain: corp.example\n"
                     "resources: {requests: {cpu: 50m}, limits: {memory: 1Gi}}\n")
    mesh = meshconfig.load(plain)
    assert (mesh.proxy_image, mesh.native_sidecar, mesh.trust_domain) == (
        "r.example/remora:2", False, "corp.example")
    assert mesh.proxy_resources.as_k8s() == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                             "limits": {"cpu": "2", "memory": "1Gi"}}
    cm = tmp_path / "cm.yaml"
    cm.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"},
                                  "data": {"mesh": plain.read_text()}}))
    assert meshconfig.load(cm) == mesh
    assert meshconfig.load(None) == MeshConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("nativeSidecar: 'no'\n", "nativeSidecar: invalid value 'no'; accepted: true or false"),
    ("drainSeconds: -1\n", "drainSeconds: invalid value -1"),
    ("controlPlaneAddress: remora-control\n", "controlPlaneAddress: invalid value 'remora-control'"),
    ("resources: {requests: {cpu: 3}}\n", "resources: cpu request is above its limit"),
    ("resources: {requests: {gpu: 1}}\n", "resources.requests: accepted: a mapping with cpu and memory"),
    ("logLevel: loud\n", "logLevel: invalid value 'loud'; accepted: one of trace, debug"),
    ("kind: ConfigMap\ndata: {}\n", "the ConfigMap has no data key 'mesh'"),
    ("a: [\n", "not valid YAML"),
    ("- 1\n", "accepted: a YAML mapping"),
])
def test_mesh_config_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(MeshConfigError) as e:
        meshconfig.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_readme_annotation_table_is_current() -> None:
    assert (REPO / "docs" / "_readme-annotations.md").read_text() == readme_table()
    assert readme_table() in (REPO / "README.md").read_text(), "paste docs/_readme-annotations.md into README.md"
    documented = (REPO / "docs" / "injection.md").read_text()
    assert readme_table() in documented, "paste docs/_readme-annotations.md into docs/injection.md"
    for a in ann.ANNOTATIONS:
        assert f"`{a.key}`" in documented, a.key


def test_unknown_namespace_fails_closed_only_when_it_matters() -> None:
    pod = simple_pod()
    outcome = admission.decide(pod, "new-ns", None, MeshConfig())
    assert (outcome.result, outcome.reason) == (admission.DENIED, "namespace-unknown")
    pod["metadata"]["labels"] = {"remora.dev/inject": "false"}
    assert admission.decide(pod, "new-ns", None, MeshConfig()).reason == "pod-disabled"
    assert admission.decide(simple_pod(), "kube-system", None, MeshConfig()).reason == "system-namespace"
