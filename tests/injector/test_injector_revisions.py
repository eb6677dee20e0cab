"""Revisions: ``remora.dev/rev`` on a namespace or pod picks which injector serves the pod;
the default revision keeps serving ``remora.dev/inject=enabled``; each revision's injector
points its proxies at its own control plane."""

from __future__ import annotations

import pytest

from injector import admission
from injector.meshconfig import MeshConfig, MeshConfigError, from_dict
from injector.template import inject_pod, template_hash

CANARY = MeshConfig(revision="canary",
                    control_plane_address="remora-control-canary.remora-system.svc:15012")


def pod(labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": "p", "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}}


@pytest.mark.parametrize(("ns_labels", "pod_labels", "served_by"), [
    ({"remora.dev/inject": "enabled"}, {}, "default"),
    ({}, {"remora.dev/inject": "true"}, "default"),
    ({"remora.dev/rev": "canary"}, {}, "canary"),  # the rev label alone enables injection
    ({"remora.dev/inject": "enabled", "remora.dev/rev": "canary"}, {}, "canary"),
    ({"remora.dev/rev": "canary"}, {"remora.dev/rev": "default"}, "default"),  # the pod wins
    ({"remora.dev/inject": "enabled"}, {"remora.dev/rev": "canary"}, "canary"),
    ({}, {"remora.dev/rev": "canary"}, "canary"),
    ({"remora.dev/rev": "canary"}, {"remora.dev/inject": "false"}, None),  # "false" still wins
    ({}, {}, None),
    ({"remora.dev/rev": "gone"}, {}, None),  # a revision that is not installed: nobody
])
def test_exactly_one_revision_serves_a_pod(ns_labels: dict, pod_labels: dict, served_by: str | None) -> None:
    served = [rev for rev in ("default", "canary")
              if admission.skip_reason(pod(pod_labels), "shop", ns_labels, rev) is None]
    assert served == ([served_by] if served_by else [])


def test_revision_injector_points_at_its_control_plane_and_stamps_its_revision() -> None:
    out = admission.decide(pod({"remora.dev/rev": "canary"}), "shop", {}, CANARY)
    assert out.result == admission.INJECTED
    proxy = out.pod["spec"]["initContainers"][1]
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["REMORA_CONTROL_PLANE"] == "remora-control-canary.remora-system.svc:15012"
    assert '"revision":"canary"' in out.pod["metadata"]["annotations"]["remora.dev/status"]
    assert template_hash(CANARY) != template_hash(MeshConfig())
    # The default injector leaves that pod to the canary one.
    other = admission.decide(pod({"remora.dev/rev": "canary"}), "shop", {}, MeshConfig())
    assert (other.result, other.reason) == (admission.SKIPPED, "other-revision")


def test_unknown_namespace_fails_closed_for_every_revision() -> None:
    out = admission.decide(pod(), "shop", None, CANARY)
    assert (out.result, out.reason) == (admission.DENIED, "namespace-unknown")
    # A pod that names its revision does not depend on the namespace's labels.
    assert admission.decide(pod({"remora.dev/rev": "canary"}), "shop", None, CANARY).result == admission.INJECTED
    assert inject_pod(pod(), CANARY)["metadata"]["annotations"]


def test_revision_in_mesh_config_is_checked() -> None:
    assert from_dict({"revision": "canary"}).revision == "canary"
    with pytest.raises(MeshConfigError, match="revision: invalid value 'Canary_1'"):
        from_dict({"revision": "Canary_1"})
