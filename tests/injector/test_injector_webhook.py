"""The real webhook over HTTPS: AdmissionReview v1 in, JSONPatch out, in both serving modes.

- operator: ``remora-injector`` as a kopf operator against kmock; it writes the
  MutatingWebhookConfiguration, and the reviews are POSTed to the URL written there.
- standalone: ``remora-injector --without-api-server`` (the local cluster's mode).

Both must give the same patched pods; those are the golden files, and each one must pass
``kubernetes-validate --strict`` for the newest Kubernetes it bundles.
Regenerate the golden files with ``REMORA_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import injector_pods as pods
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from injector_harness import BIN, KubeEmulator, Webhook, decode_patch
from kubernetes_validate import utils as kv_utils

from injector.meshconfig import MeshConfig
from injector.template import inject_pod

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "injector"
K8S_VERSION = kv_utils.latest_version()


def validate(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def check_golden(name: str, pod: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(pod, sort_keys=False, default_flow_style=False)
    if os.environ.get("REMORA_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with REMORA_UPDATE_GOLDEN=1"
    assert yaml.safe_load(path.read_text()) == pod, f"{path} differs from the webhook's result"


INJECTED_CASES = {
    "deployment-pod": pods.deployment_pod,
    "job-pod": pods.job_pod,
    "every-annotation-pod": pods.every_annotation_pod,
}


def test_the_newest_bundled_kubernetes_has_native_sidecars() -> None:
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 29), K8S_VERSION


@pytest.mark.parametrize("case", sorted(INJECTED_CASES))
def test_injected_pods_match_golden_and_validate(webhook: Webhook, case: str) -> None:
    pod = INJECTED_CASES[case]()
    validate(pod)  # the input is a valid pod too
    review = pods.admission_review(pod)
    answer = webhook.review(review)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, decode_patch(answer))
    validate(patched)
    check_golden(case, patched)


def test_deployment_pod_details(webhook: Webhook) -> None:
    pod = pods.deployment_pod()
    patched = jsonpatch.apply_patch(pod, decode_patch(webhook.review(pods.admission_review(pod))))
    spec = patched["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["remora-init", "remora-proxy"]
    assert [c["name"] for c in spec["containers"]] == ["reviews", "log-shipper"]
    proxy = spec["initContainers"][1]
    assert proxy["restartPolicy"] == "Always" and proxy["startupProbe"]["httpGet"]["port"] == 15021
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    probes = json.loads(env["REMORA_APP_PROBES"])
    assert probes == {
        "/app-health/reviews/readyz": {"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"},
                                       "timeoutSeconds": 2},
        "/app-health/reviews/livez": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1},
        "/app-health/reviews/startupz": {"grpc": {"port": 9090, "service": "reviews"},
                                         "timeoutSeconds": 1},
        "/app-health/log-shipper/livez": {"httpGet": {
            "path": "/api/v1/health", "port": 2020, "scheme": "HTTP",
            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}, "timeoutSeconds": 1},
    }
    reviews, shipper = spec["containers"]
    assert reviews["readinessProbe"]["httpGet"] == {
        "path": "/app-health/reviews/readyz", "port": 15020, "scheme": "HTTP"}
    assert reviews["readinessProbe"]["periodSeconds"] == 5  # timings kept
    assert shipper["readinessProbe"] == pod["spec"]["containers"][1]["readinessProbe"]  # exec
    annotations = patched["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "reviews"
    status = json.loads(annotations["remora.dev/status"])
    assert status["initContainers"] == ["remora-init", "remora-proxy"]
    assert status["volumes"] == ["remora-workdir", "remora-token", "remora-trust"]


def test_every_annotation_reaches_init_and_proxy(webhook: Webhook) -> None:
    pod = pods.every_annotation_pod()
    patched = jsonpatch.apply_patch(pod, decode_patch(webhook.review(pods.admission_review(pod))))
    init = patched["spec"]["initContainers"][0]
    assert init["command"] == [
        "remora-init", "--proxy-uid", "1337", "--proxy-gid", "1337", "--inbound-port", "15006",
        "--outbound-port", "15001", "--include-inbound-ports", "9080,9443",
        "--exclude-inbound-ports", "9100", "--include-outbound-ports", "443",
        "--exclude-outbound-ports", "5432,6379", "--exclude-outbound-cidrs", "169.254.169.254/32",
        "--include-outbound-cidrs", "198.18.0.0/15,fd00::/8", "--dns-capture", "false"]
    proxy = patched["spec"]["containers"][0]  # native-sidecar "false": first app container
    assert proxy["name"] == "remora-proxy" and "restartPolicy" not in proxy
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == [
        "remora-proxy", "wait", "--timeout", "60"]
    assert proxy["image"] == init["image"] == "registry.example/remora:0.1.0-rc1"
    assert proxy["resources"] == {"requests": {"cpu": "200m", "memory": "128Mi"},
                                  "limits": {"cpu": "1", "memory": "512Mi"}}
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert (env["REMORA_LOG_LEVEL"], env["REMORA_DRAIN_SECONDS"], env["REMORA_OPAQUE_PORTS"],
            env["REMORA_DNS_CAPTURE"]) == ("debug", "30", "5432,6379", "false")
    assert patched["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "ratings"


SKIPPED_CASES = {
    "host-network": (pods.host_network_pod, "host-network"),
    "already-injected": (lambda: inject_pod(pods.deployment_pod(), MeshConfig()), "already-injected"),
    "pod-label-false": (lambda: pods.with_inject_label(pods.deployment_pod(), "shop", "false"),
                        "pod-disabled"),
    "kube-system": (lambda: pods.with_inject_label(pods.deployment_pod(), "kube-system", "true"),
                    "system-namespace"),
    "namespace-not-enabled": (lambda: pods.with_inject_label(pods.deployment_pod(), "plain", None),
                              "not-enabled"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED_CASES))
def test_skipped_pods_are_allowed_unchanged(webhook: Webhook, case: str) -> None:
    make, reason = SKIPPED_CASES[case]
    pod = make()
    before = _skipped(webhook, reason)
    answer = webhook.review(pods.admission_review(pod))
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    assert _skipped(webhook, reason) == before + 1  # counted under its reason


def _istio_sidecar() -> dict[str, Any]:
    pod = pods.deployment_pod()
    pod["spec"]["containers"].append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0"})
    return pod


def _linkerd_annotation() -> dict[str, Any]:
    pod = pods.job_pod()
    pod["metadata"]["annotations"] = {"linkerd.io/proxy-version": "edge-24.11.1"}
    return pod


@pytest.mark.parametrize(("make", "expect"), [
    (_istio_sidecar, "Istio's sidecar (container istio-proxy)"),
    (_linkerd_annotation, "Linkerd's sidecar (annotation linkerd.io/proxy-version)"),
])
def test_a_pod_of_another_mesh_is_left_alone_with_the_reason(webhook: Webhook, make, expect: str) -> None:
    before = _skipped(webhook, "other-mesh")
    response = webhook.review(pods.admission_review(make()))["response"]
    assert response["allowed"] is True and "patch" not in response
    (warning,) = response["warnings"]
    assert warning.startswith("not injected: the pod already carries " + expect)
    assert _skipped(webhook, "other-mesh") == before + 1
    assert expect in webhook.log.read_text()


def _skipped(webhook: Webhook, reason: str) -> int:
    return _metric(webhook, f'remora_injector_pods_skipped_total{{reason="{reason}"}}')


def _metric(webhook: Webhook, name: str) -> int:
    for line in webhook.metrics().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    return 0


def test_bad_annotation_denies_with_a_clear_message(webhook: Webhook) -> None:
    denied = _metric(webhook, "remora_injector_pods_denied_total")
    answer = webhook.review(pods.admission_review(pods.bad_annotation_pod()))
    response = answer["response"]
    assert response["allowed"] is False and "patch" not in response
    message = response["status"]["message"]
    assert "remora.dev/proxy-memory" in message and "'lots'" in message and "accepted:" in message
    assert response["status"]["code"] == 400
    assert _metric(webhook, "remora_injector_pods_denied_total") == denied + 1


def test_injections_are_counted_and_logged(webhook: Webhook) -> None:
    injected = _metric(webhook, "remora_injector_pods_injected_total")
    webhook.review(pods.admission_review(pods.job_pod()))
    assert _metric(webhook, "remora_injector_pods_injected_total") == injected + 1
    assert "injected pod shop/db-migrate-*" in webhook.log.read_text()


def test_operator_keeps_the_webhook_configuration_pointed_at_itself(
    kube: KubeEmulator, operator_webhook: Webhook
) -> None:
    config = kube.webhook_configuration("remora-injector")
    assert config is not None
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["url"] == operator_webhook.url  # where the other tests POST
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == operator_webhook.ca.read_bytes()
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "*"}]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"


def test_operator_fails_closed_for_a_namespace_it_does_not_know(operator_webhook: Webhook) -> None:
    unknown = pods.with_inject_label(pods.deployment_pod(), "ghost", None)
    response = operator_webhook.review(pods.admission_review(unknown))["response"]
    assert response["allowed"] is False and response["status"]["code"] == 503
    assert "namespace 'ghost' is not known to remora-injector yet" in response["status"]["message"]
    opted_in = pods.with_inject_label(pods.deployment_pod(), "ghost", "true")
    assert operator_webhook.review(pods.admission_review(opted_in))["response"]["allowed"] is True


def test_unknown_annotation_is_a_warning(webhook: Webhook) -> None:
    pod = pods.job_pod()
    pod["metadata"]["annotations"] = {"remora.dev/proxy-cpus": "1"}
    response = webhook.review(pods.admission_review(pod))["response"]
    assert response["allowed"] is True and "patch" in response
    assert response["warnings"] == [
        "unknown annotation remora.dev/proxy-cpus is ignored; see docs/injection.md"]


def test_injector_refuses_a_bad_mesh_config(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text("drainSeconds: soon\n")
    result = subprocess.run([str(BIN / "remora-injector"), "--mesh-config", str(bad),
                             "--without-api-server", "--metrics-port", "0",
                             "--self-signed-dir", str(tmp_path / "certs")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "drainSeconds: invalid value 'soon'" in result.stderr
