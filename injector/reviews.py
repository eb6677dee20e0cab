"""What makes an AdmissionReview unanswerable, checked before any handler sees it.

The API server only ever sends well-formed reviews, but the webhook port is reachable by
anything in the cluster: a malformed body must get a 400 that says what is wrong, never a
500 (an unhandled exception) and never an "allowed" answer to a review with no request.
Both serving modes (kopf operator and standalone) go through ``CheckedWebhookServer``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf
from kopf._core.engines.admission import WebhookError  # kopf answers it with HTTP 400

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def _what(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _need(value: Any, typ: type, path: str, what: str) -> str | None:
    if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return None
    return f"{path} must be {what}, got {_what(value)}"


def _containers(spec: dict, field: str) -> str | None:
    items = spec.get(field)
    problem = _need(items, list, f"request.object.spec.{field}", "an array")
    if problem or items is None:
        return problem
    for i, c in enumerate(items):
        path = f"request.object.spec.{field}[{i}]"
        if not isinstance(c, dict):
            return f"{path} must be an object, got {_what(c)}"
        for key, typ, what in (("name", str, "a string"), ("ports", list, "an array"),
                               ("env", list, "an array"), ("args", list, "an array"),
                               ("command", list, "an array")):
            problem = _need(c.get(key), typ, f"{path}.{key}", what)
            if problem:
                return problem
    return None


def pod_problem(pod: Any) -> str | None:
    """The first shape error of the pod in ``request.object`` (what the template reads)."""
    if not isinstance(pod, dict):
        return f"request.object must be an object, got {_what(pod)}"
    meta = pod.get("metadata")
    problem = _need(meta, dict, "request.object.metadata", "an object")
    if problem:
        return problem
    for key in ("labels", "annotations"):
        values = (meta or {}).get(key)
        problem = _need(values, dict, f"request.object.metadata.{key}", "an object")
        if problem:
            return problem
        for k, v in (values or {}).items():
            if not isinstance(v, str):
                return f"request.object.metadata.{key}[{k!r}] must be a string, got {_what(v)}"
    spec = pod.get("spec")
    problem = _need(spec, dict, "request.object.spec", "an object")
    if problem or spec is None:
        return problem
    for field in ("containers", "initContainers"):
        problem = _containers(spec, field)
        if problem:
            return problem
    for key, typ, what in (("volumes", list, "an array"), ("hostNetwork", bool, "a boolean"),
                           ("serviceAccountName", str, "a string")):
        problem = _need(spec.get(key), typ, f"request.object.spec.{key}", what)
        if problem:
            return problem
    return None


def review_problem(review: Any) -> str | None:
    """Why ``review`` cannot be answered, or None when it can."""
    if not isinstance(review, dict):
        return f"an AdmissionReview must be a JSON object, got {_what(review)}"
    request = review.get("request")
    if request is None:
        return "the AdmissionReview has no request"
    if not isinstance(request, dict):
        return f"request must be an object, got {_what(request)}"
    for key, typ, what in (("uid", str, "a string"), ("operation", str, "a string"),
                           ("namespace", str, "a string"), ("kind", dict, "an object"),
                           ("userInfo", dict, "an object")):
        problem = _need(request.get(key), typ, f"request.{key}", what)
        if problem:
            return problem
    if not request.get("uid"):
        return "request.uid is required"
    if "object" in request and request["object"] is not None:
        return pod_problem(request["object"])
    return None


class CheckedWebhookServer(kopf.WebhookServer):
    """``kopf.WebhookServer`` that refuses malformed reviews with 400 and a message."""

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def checked(review: Any, **kwargs: Any) -> Any:
            problem = review_problem(review)
            if problem is not None:
                raise WebhookError(f"malformed AdmissionReview: {problem}")
            return await fn(review, **kwargs)

        async for config in super().__call__(checked):  # type: ignore[arg-type]  # same call shape
            yield config
