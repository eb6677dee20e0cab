"""The injector's state: mesh config and counters, and the two ways of serving it.

- ``operator_registry``: the kopf operator (needs an API server): a namespace index for the
  injection labels and a ``@kopf.on.mutate`` handler for Pod CREATE.
- ``standalone_webhook``: the same decision behind ``kopf.WebhookServer`` alone, for the local
  cluster (no API server); namespace labels come from a YAML file of Namespace objects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
import yaml
from kopf._core.intents import registries  # SmartOperatorRegistry: kopf.run() uses it, not exported

from injector.admission import DENIED, INJECTED, Outcome, decide
from injector.meshconfig import MeshConfig
from injector.metrics import Counters
from injector.template import json_patch

HANDLER_ID = "remora-inject"


class Injector:
    def __init__(self, mesh: MeshConfig) -> None:
        self.mesh = mesh
        self.counters = Counters()

    def review(self, pod: dict[str, Any], namespace: str, labels: Mapping[str, str] | None) -> Outcome:
        outcome = decide(pod, namespace, labels, self.mesh)
        meta = pod.get("metadata") or {}
        name = f"{namespace}/{meta.get('name') or meta.get('generateName', '') + '*'}"
        self.counters.record(outcome, name)
        return outcome


def operator_registry(
    injector: Injector, server: kopf.WebhookServer, managed: str | None
) -> kopf.OperatorRegistry:
    """A kopf registry serving the webhook; ``managed`` names the MutatingWebhookConfiguration."""
    registry = registries.SmartOperatorRegistry()  # with the default logins (kubeconfig, in-cluster)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = server
        settings.admission.managed = managed
        settings.posting.enabled = False  # no k8s Events for each admission
        # No CRD discovery: the injector only watches namespaces, and its role grants no more.
        settings.scanning.disabled = True

    @kopf.index("namespaces", id="namespace_labels", registry=registry)
    def namespace_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, dict[str, str]]:
        return {name: dict(labels)}

    # kopf passes the handler the keyword arguments it names; its WebhookFn type says less.
    @kopf.on.mutate("pods", operations=["CREATE"], id=HANDLER_ID, registry=registry,  # type: ignore[arg-type]
                    side_effects=False, ignore_failures=False)
    def inject(body: kopf.Body, patch: kopf.Patch, warnings: list[str],
               namespace_labels: kopf.Index[str, dict[str, str]], **_: Any) -> None:
        namespace = body.metadata.namespace or "default"
        store = namespace_labels.get(namespace)
        labels = next(iter(store), None) if store is not None else None
        outcome = injector.review(dict(body), namespace, labels)
        warnings.extend(outcome.warnings)
        if outcome.result == DENIED:
            code = 503 if outcome.reason == "namespace-unknown" else 400
            raise kopf.AdmissionError(outcome.message, code=code)
        if outcome.result == INJECTED:
            new = outcome.pod

            def replace(raw: dict[str, Any]) -> None:
                raw.clear()
                raw.update(new)  # type: ignore[arg-type]  # INJECTED: the pod is there

            patch.fns.append(replace)  # type: ignore[arg-type]  # kopf's RawBody is this dict

    return registry


class NamespaceFile:
    """Namespace labels from a YAML file of Namespace objects, re-read when it changes."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._mtime: float | None = None
        self._labels: dict[str, dict[str, str]] = {}

    def labels(self, namespace: str) -> dict[str, str]:
        if self.path is None or not self.path.exists():
            return {}
        mtime = self.path.stat().st_mtime
        if mtime != self._mtime:
            docs = [d for d in yaml.safe_load_all(self.path.read_text()) if isinstance(d, dict)]
            self._labels = {
                d["metadata"]["name"]: dict(d["metadata"].get("labels") or {})
                for d in docs if d.get("kind") == "Namespace"
            }
            self._mtime = mtime
        return self._labels.get(namespace, {})


def admission_response(review: dict[str, Any], outcome: Outcome, old: dict[str, Any]) -> dict[str, Any]:
    """An AdmissionReview v1 response, shaped as kopf shapes it."""
    response: dict[str, Any] = {"uid": review.get("request", {}).get("uid", ""),
                                "allowed": outcome.result != DENIED}
    if outcome.warnings:
        response["warnings"] = outcome.warnings
    if outcome.result == INJECTED:
        ops = json_patch(old, outcome.pod or {})
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode("ascii")
        response["patchType"] = "JSONPatch"
    if outcome.result == DENIED:
        response["status"] = {"message": outcome.message, "code": 400}
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": review.get("kind", "AdmissionReview"), "response": response}


def standalone_webhook(injector: Injector, namespaces: NamespaceFile) -> kopf.WebhookFn:
    """A ``kopf.WebhookFn`` answering Pod CREATE reviews without an operator around it."""

    async def fn(review: dict[str, Any], **_: Any) -> dict[str, Any]:
        request = review.get("request") or {}
        pod = request.get("object") or {}
        if request.get("operation") != "CREATE" or (request.get("kind") or {}).get("kind") != "Pod":
            return admission_response(review, Outcome("ignored", reason="not-a-pod-create"), pod)
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
        outcome = injector.review(pod, namespace, namespaces.labels(namespace))
        return admission_response(review, outcome, pod)

    return fn  # type: ignore[return-value]  # kopf calls it with the review as its first argument
