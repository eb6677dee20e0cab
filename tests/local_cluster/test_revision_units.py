"""Pure parts of local-cluster revisions: which webhook a pod goes to (the chart's selectors),
the revision's command lines and mesh config, and the image tag standing in for a version."""

from __future__ import annotations

from pathlib import Path

import pytest

from injector import meshconfig
from local_cluster import config, images, revisions
from local_cluster.revisions import Revision, Revisions

CANARY = Revision("canary", 1, 40001, 40002, "0.2.0")


def pod(**labels: str) -> dict:
    return {"metadata": {"name": "p", "labels": labels}}


@pytest.fixture
def revs(tmp_path: Path) -> Revisions:
    r = Revisions(config.StateDir(tmp_path), "node", None)
    r.running["canary"] = (CANARY, [])
    return r


@pytest.mark.parametrize(("ns", "labels", "want"), [
    ({"remora.dev/inject": "enabled"}, {}, "default"),
    ({}, {"remora.dev/inject": "true"}, "default"),
    ({}, {}, None),
    ({"remora.dev/rev": "canary"}, {}, "canary"),
    ({"remora.dev/inject": "enabled", "remora.dev/rev": "canary"}, {}, "canary"),
    ({"remora.dev/rev": "canary"}, {"remora.dev/rev": "default"}, "default"),
    ({}, {"remora.dev/rev": "canary"}, "canary"),
    ({"remora.dev/rev": "gone"}, {}, None),  # no such revision: no webhook, as on Kubernetes
])
def test_webhook_for(revs: Revisions, ns: dict, labels: dict, want: str | None) -> None:
    got = revs.webhook_for(pod(**labels), ns)
    assert (got.name if isinstance(got, Revision) else got) == want


def test_revision_processes_and_mesh_config(tmp_path: Path) -> None:
    state = config.StateDir(tmp_path)
    control, injector = revisions.argv(state, CANARY)
    assert control[control.index("--port") + 1] == "15112"
    assert control[control.index("--revision") + 1] == "canary"
    assert injector[injector.index("--metrics-port") + 1] == "40002"
    mesh = meshconfig.from_dict(revisions.mesh_config(CANARY))
    assert (mesh.revision, mesh.proxy_version, mesh.control_plane_address) == (
        "canary", "0.2.0", "198.18.0.1:15112")
    assert images.image_tag(mesh.proxy_image) == "0.2.0"
    with pytest.raises(ValueError, match="a DNS label other than 'default'"):
        revisions.check_name("default")
    with pytest.raises(ValueError):
        revisions.check_name("Canary")


def test_image_tag_is_the_proxy_version() -> None:
    assert images.version_env({"name": "remora-proxy", "image": "reg.example:5000/remora:0.2.0"}) == {
        "REMORA_VERSION_OVERRIDE": "0.2.0"}
    assert images.version_env({"name": "remora-proxy", "image": "remora"}) == {}
    assert images.version_env({"name": "app", "image": "app:9.9"}) == {}
    assert images.image_tag("reg.example:5000/remora") is None
