"""A pod is an endpoint only while it is Ready, as EndpointSlices say: a Ready condition of False
(starting, failing its readiness probe) or a deletionTimestamp (terminating) takes it out."""

from __future__ import annotations

import pytest

from control_plane.resources import parse_pod


def pod(status: dict, **meta: str) -> dict:
    return {"metadata": {"name": "p", "namespace": "d", **meta},
            "spec": {"containers": [{"name": "a"}]}, "status": {"podIP": "198.18.0.9", **status}}


@pytest.mark.parametrize(("status", "meta", "ready"), [
    ({}, {}, True),  # static files: no conditions at all
    ({"conditions": [{"type": "Ready", "status": "True"}]}, {}, True),
    ({"conditions": [{"type": "Ready", "status": "False"}]}, {}, False),
    ({"conditions": [{"type": "Ready", "status": "True"}]},
     {"deletionTimestamp": "2026-12-01T00:00:00Z"}, False),
    ({"phase": "Succeeded"}, {}, False),
])
def test_only_ready_pods_are_endpoints(status: dict, meta: dict, ready: bool) -> None:
    assert parse_pod(pod(status, **meta)).ready is ready
