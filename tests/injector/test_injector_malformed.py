"""Malformed AdmissionReviews POSTed to the real webhook over HTTPS, in both serving modes:
each gets HTTP 400 with a message naming what is wrong, never a 500, and a review with no
request is refused rather than allowed."""

from __future__ import annotations

import copy
import json
import ssl
import urllib.error
import urllib.request

import injector_pods as pods
import pytest
from injector_harness import Webhook

from injector.reviews import review_problem


def post(webhook: Webhook, body: bytes) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(webhook.ca))
    req = urllib.request.Request(webhook.url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, f"{e.reason} {e.read().decode()}"


def review_with(**changes) -> dict:
    review = pods.admission_review(pods.deployment_pod())
    obj = review["request"]["object"]
    for path, value in changes.items():
        target = obj
        *parents, last = path.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    return review


def no_request() -> dict:
    review = pods.admission_review(pods.deployment_pod())
    del review["request"]
    return review


def request_is(value) -> dict:
    review = copy.deepcopy(pods.admission_review(pods.deployment_pod()))
    review["request"] = value
    return review


CASES = {
    "json-array": (b"[1, 2]", "an AdmissionReview must be a JSON object, got an array"),
    "not-json": (b"{not json", ""),
    "no-request": (json.dumps(no_request()).encode(), "the AdmissionReview has no request"),
    "request-string": (json.dumps(request_is("x")).encode(), "request must be an object, got a string"),
    "containers-5": (json.dumps(review_with(spec__containers=5)).encode(),
                     "request.object.spec.containers must be an array, got a number"),
    "container-string": (json.dumps(review_with(spec__containers=["app"])).encode(),
                         "request.object.spec.containers[0] must be an object, got a string"),
    "label-number": (json.dumps(review_with(metadata__labels={"app": 5})).encode(),
                     "request.object.metadata.labels['app'] must be a string, got a number"),
    "spec-list": (json.dumps(review_with(spec=[])).encode(),
                  "request.object.spec must be an object, got an array"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_review_is_a_400_with_a_message(webhook: Webhook, case: str) -> None:
    body, message = CASES[case]
    status, text = post(webhook, body)
    assert status == 400, (status, text)
    assert message in text, text
    # The webhook is still healthy: a good review is answered.
    good = webhook.review(pods.admission_review(pods.job_pod()))
    assert good["response"]["allowed"] is True


def test_deeper_shape_errors_deny_with_a_message() -> None:
    from injector.admission import DENIED, decide
    from injector.meshconfig import MeshConfig

    pod = pods.deployment_pod()
    pod["metadata"]["labels"]["remora.dev/inject"] = "true"
    pod["spec"]["containers"][0]["ports"] = [5]
    assert review_problem(pods.admission_review(pod)) is None
    outcome = decide(pod, "default", {}, MeshConfig())
    assert outcome.result == DENIED and "malformed pod" in outcome.message
