"""The webhook's selectors send the API server's Pod CREATEs exactly where the injector acts.

The injector's own decision function (injector/admission.py) is run on every sample and
compared with an evaluation of the rendered selectors, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import itertools
import ssl
from pathlib import Path
from typing import Any

import pytest
from chart_kit import NAMESPACE, Rendered, render, selector_matches, tls_pair

from control_plane.api import annotations as ann
from injector.admission import SKIPPED, decide
from injector.meshconfig import MeshConfig

NAMESPACES: dict[str, dict[str, str]] = {
    "default": {},
    "shop": {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE},
    "legacy": {ann.INJECT_LABEL: "disabled"},
    "typo": {ann.INJECT_LABEL: "Enabled", "team": "a"},
    "kube-system": {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE},
    "kube-public": {},
    "kube-node-lease": {},
    NAMESPACE: {ann.INJECT_LABEL: ann.NAMESPACE_INJECT_VALUE},
}
POD_LABELS: list[dict[str, str]] = [
    {}, {"app": "web"}, {ann.INJECT_LABEL: "true"}, {ann.INJECT_LABEL: "false", "app": "web"},
    {ann.INJECT_LABEL: "maybe"}, {ann.INJECT_LABEL: "True"},
]


def _pod(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace, "labels": dict(labels)},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _webhooks_called(chart: Rendered, namespace: str, pod_labels: dict[str, str]) -> list[str]:
    """Names of the webhooks the API server calls for this Pod CREATE."""
    # The API server sets this label on every namespace (Kubernetes 1.21+).
    ns_labels = {**NAMESPACES[namespace], "kubernetes.io/metadata.name": namespace}
    config = chart.get("MutatingWebhookConfiguration", "remora-injector")
    return [
        hook["name"] for hook in config["webhooks"]
        if any(r["operations"] == ["CREATE"] and r["resources"] == ["pods"] for r in hook["rules"])
        and selector_matches(hook["namespaceSelector"], ns_labels)
        and selector_matches(hook["objectSelector"], pod_labels)
    ]


CASES = list(itertools.product(NAMESPACES, POD_LABELS))


@pytest.mark.parametrize(("namespace", "labels"), CASES,
                         ids=[f"{n}-{'-'.join(f'{v}' for v in lbl.values()) or 'none'}" for n, lbl in CASES])
def test_selectors_agree_with_the_injector_decision(chart: Rendered, namespace: str,
                                                    labels: dict[str, str]) -> None:
    called = _webhooks_called(chart, namespace, labels)
    assert len(called) <= 1, f"the webhooks overlap: {called}"  # no pod is reviewed twice
    outcome = decide(_pod(namespace, labels), namespace, NAMESPACES[namespace], MeshConfig())
    if namespace == NAMESPACE:
        # Deliberate: the mesh's own namespace never waits for the injector (it would deadlock
        # the injector's own restart), whatever its labels say.
        assert called == []
    else:
        # Called exactly when the injector would inject or deny; never for a pod it would skip.
        assert bool(called) == (outcome.result != SKIPPED), (outcome.result, outcome.reason)


def test_webhook_settings(chart: Rendered) -> None:
    injector = chart.values.get("injector", {})
    for hook in chart.get("MutatingWebhookConfiguration", "remora-injector")["webhooks"]:
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                                  "operations": ["CREATE"], "scope": "Namespaced"}]
        assert hook["failurePolicy"] == injector.get("failurePolicy", "Fail")
        assert hook["timeoutSeconds"] == injector.get("timeoutSeconds", 10)
        assert (hook["sideEffects"], hook["admissionReviewVersions"]) == ("None", ["v1"])
        assert hook["reinvocationPolicy"] == "Never"


def test_generated_webhook_certificate_is_trusted_through_ca_bundle(default_chart: Rendered,
                                                                    tmp_path: Path) -> None:
    secret = default_chart.get("Secret", "remora-injector-tls")
    assert secret["type"] == "kubernetes.io/tls"
    bundles = {h["clientConfig"]["caBundle"]
               for h in default_chart.get("MutatingWebhookConfiguration", "remora-injector")["webhooks"]}
    assert bundles == {secret["data"]["ca.crt"]}
    (tmp_path / "tls.crt").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    (tmp_path / "tls.key").write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    # As the API server dials a webhook Service: <service>.<namespace>.svc, trusting caBundle only.
    client = ssl.create_default_context(cadata=base64.b64decode(bundles.pop()).decode())
    with tls_pair(server, client, f"remora-injector.{NAMESPACE}.svc") as (_, conn):
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError), tls_pair(server, client, "other.svc"):
        pass


def test_cert_manager_injects_the_ca_bundle(custom_chart: Rendered) -> None:
    config = custom_chart.get("MutatingWebhookConfiguration", "remora-injector")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "remora-system/remora-injector"}
    assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])
    assert [s for s in custom_chart.all("Secret") if s["metadata"]["name"] == "remora-injector-tls"] == []


def test_a_given_ca_bundle_is_used_as_is() -> None:
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
    objects = render({"injector": {"webhook": {"certSecret": "mine", "caBundle": bundle}}})
    (config,) = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    assert {h["clientConfig"]["caBundle"] for h in config["webhooks"]} == {bundle}
    assert "annotations" not in config["metadata"]
