"""The API server's side of the mutating webhook: AdmissionReview v1 over HTTPS, JSONPatch back.

Which pods are sent follows the webhook configuration Remora's chart installs: pods in
namespaces labelled ``remora.dev/inject=enabled`` and pods labelled ``remora.dev/inject:
"true"`` (the injector itself then decides, e.g. a pod labelled "false" is left alone).
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch

from control_plane.api import annotations as ann

WEBHOOK_PATH = "/remora-inject"
TIMEOUT_SECONDS = 10  # the API server's default webhook timeout


class AdmissionDenied(ValueError):
    """The webhook refused the pod; the message is the webhook's own."""


class WebhookUnavailable(RuntimeError):
    """The webhook could not be reached (failurePolicy Fail: the pod is not created)."""


def selected(pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return (namespace_labels.get(ann.INJECT_LABEL) == ann.NAMESPACE_INJECT_VALUE
            or labels.get(ann.INJECT_LABEL) == "true")


def review_request(pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview an API server sends for a Pod CREATE."""
    meta = pod["metadata"]
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:remora-local", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_response(pod: dict[str, Any], review: dict[str, Any], answer: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The patched pod and the webhook's warnings; AdmissionDenied when it was refused."""
    response = answer.get("response") or {}
    if response.get("uid") != review["request"]["uid"]:
        raise WebhookUnavailable("the webhook answered with another request's uid")
    if not response.get("allowed"):
        message = (response.get("status") or {}).get("message") or "denied (no reason given)"
        raise AdmissionDenied(f'admission webhook "remora-injector" denied the request: {message}')
    warnings = list(response.get("warnings") or [])
    if not response.get("patch"):
        return pod, warnings
    if response.get("patchType") != "JSONPatch":
        raise WebhookUnavailable(f"unsupported patchType {response.get('patchType')!r}")
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, ops), warnings


async def admit(pod: dict[str, Any], url: str, ca_file: Path) -> tuple[dict[str, Any], list[str]]:
    """Send ``pod`` to the webhook at ``url`` (HTTPS, verified against ``ca_file``)."""
    review = review_request(pod)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.post(url + WEBHOOK_PATH, json=review, ssl=ctx) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise WebhookUnavailable(f"webhook {url} answered HTTP {resp.status}: {text}")
            answer = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as e:
        raise WebhookUnavailable(f"webhook {url} cannot be reached: {type(e).__name__}: {e}") from None
    return apply_response(pod, review, answer)
