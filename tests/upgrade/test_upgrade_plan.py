"""`remoractl upgrade`'s decisions without a cluster: what is outdated, who owns it, the waves,
the error-rate gate and the resume state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from injector.meshconfig import MeshConfig
from injector.template import inject_pod
from remoractl import upgrade_plan as up
from remoractl.upgrade_backends import expected_from
from remoractl.upgrade_plan import Expected, PodInfo, UpgradeError

WANT = Expected("0.2.0", "h-new")


def pod(name: str, kind: str = "Deployment", owner: str = "web", version: str = "0.1.0",
        h: str = "h-old", ns: str = "demo", labels: dict | None = None) -> PodInfo:
    status = {"proxyVersion": version, "templateHash": h} if version else {}
    return PodInfo(ns, name, kind, owner, True, status, labels or {})


def test_expected_is_what_the_injector_stamps_now() -> None:
    mesh = MeshConfig(proxy_version="0.2.0")
    stamped = inject_pod({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}, mesh)
    status = up.parse_status(stamped["metadata"]["annotations"])
    want = expected_from(mesh)
    assert (status["proxyVersion"], status["templateHash"]) == (want.proxy_version, want.template_hash)
    assert up.outdated_because(PodInfo("d", "p", "", "", True, status), want) == ""
    assert up.outdated_because(PodInfo("d", "p", "", "", True, status),
                               expected_from(MeshConfig(proxy_version="0.3.0"))).startswith("proxy 0.2.0")


def test_outdated_pods_are_grouped_by_restartable_owner_and_the_rest_reported() -> None:
    pods = [pod("web-1"), pod("web-2"), pod("db-0", "StatefulSet", "db"),
            pod("agent-x", "DaemonSet", "agent"),
            pod("batch-1", "Job", "batch"), pod("lonely", "", ""), pod("rs-1", "ReplicaSet", "rs"),
            pod("fresh", version="0.2.0", h="h-new"), pod("plain", version="")]
    p = up.plan(pods, WANT)
    assert [w.id for w in p.restart] == ["daemonset/demo/agent", "deployment/demo/web",
                                         "statefulset/demo/db"]
    assert p.restart[1].pods == ["web-1", "web-2"]
    assert p.restart[1].why == "proxy 0.1.0 (want 0.2.0), template h-old (want h-new)"
    reported = dict(p.reported)
    assert "Jobs are never restarted" in reported["pod demo/batch-1"]
    assert "a bare pod" in reported["pod demo/lonely"]
    assert "ReplicaSet rs without a Deployment" in reported["pod demo/rs-1"]
    assert p.current == 1  # "fresh"; "plain" is not injected at all


def test_another_revision_is_outdated_when_a_revision_is_asked_for() -> None:
    want = Expected("0.2.0", "h-new", revision="canary")
    p = pod("web-1", version="0.2.0", h="h-new", labels={up.REV_LABEL: "stable"})
    assert up.outdated_because(p, want) == "revision stable (want canary)"
    assert up.outdated_because(p, Expected("0.2.0", "h-new")) == ""


@pytest.mark.parametrize(("budget", "sizes", "want"), [
    ("2", [1, 1, 1, 1], [[1, 1], [1, 1]]),
    ("1", [1, 1, 1], [[1], [1], [1]]),
    ("3", [2, 2, 1], [[2], [2, 1]]),
    ("1", [3, 1], [[3], [1]]),  # bigger than the budget: a wave of its own
    ("50%", [1, 1, 1, 1], [[1, 1], [1, 1]]),
    ("10%", [1, 1], [[1], [1]]),  # rounds down, but at least one
])
def test_waves_hold_at_most_max_unavailable_pods(budget: str, sizes: list[int],
                                                 want: list[list[int]]) -> None:
    ws = [up.Workload("Deployment", "d", f"w{i}", [f"p{i}-{j}" for j in range(n)])
          for i, n in enumerate(sizes)]
    assert [[len(w.pods) for w in wave] for wave in up.waves(ws, budget)] == want


@pytest.mark.parametrize("bad", ["0", "-1", "x", "150%", "%", "1.5"])
def test_bad_max_unavailable_is_named(bad: str) -> None:
    with pytest.raises(UpgradeError, match=f"--max-unavailable '{bad}'"):
        up.parse_budget(bad)


def test_error_rate_gate() -> None:
    samples = {
        ("remora_requests_total", (("direction", "inbound"), ("response_code", "200"))): 90.0,
        ("remora_requests_total", (("direction", "inbound"), ("response_code", "503"))): 10.0,
        ("remora_requests_total", (("direction", "outbound"), ("response_code", "503"))): 50.0,
        ("istio_requests_total", (("reporter", "destination"), ("response_code", "500"))): 5.0,
    }
    assert up.error_ratio(samples) == (105.0, 15.0)
    assert not up.worse((100, 0), (0, 0), 0.01)  # no traffic: nothing to judge
    assert not up.worse((100, 10), (100, 10), 0.01)
    assert up.worse((100, 0), (100, 5), 0.01)
    assert not up.worse((0, 0), (200, 1), 0.01)


def test_state_survives_a_round_trip_and_a_broken_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s" / "upgrade.json"
    assert up.State.load(path) is None
    st = up.State({"proxy_version": "0.2.0"}, [{"id": "deployment/d/w", "previous": ""}], ["x"])
    st.save(path)
    assert up.State.load(path) == st
    path.write_text(json.dumps([1]))
    with pytest.raises(UpgradeError, match="not an upgrade state file"):
        up.State.load(path)


def test_a_revision_target_is_that_revisions_mesh_config() -> None:
    canary = MeshConfig(proxy_version="0.2.0", revision="canary")
    assert expected_from(canary, "canary") == Expected("0.2.0", expected_from(canary).template_hash, "canary")
    with pytest.raises(UpgradeError, match="--revision 'canary': cm is revision 'default''s"):
        expected_from(MeshConfig(proxy_version="0.2.0"), "canary", "cm")


def test_the_local_backend_reads_the_revisions_own_mesh_config(tmp_path: Path, monkeypatch) -> None:
    """On the local cluster, --revision R's target is R's injector's mesh config, as
    ``remoractl local revision add`` wrote it; a revision that is not running is named."""
    import yaml

    from local_cluster import config, revisions
    from remoractl.upgrade_backends import LocalBackend

    state = config.StateDir(tmp_path)
    rev = revisions.Revision("canary-1", 1, 1, 2, "0.2.0")
    path = revisions.mesh_config_path(state, "canary-1")
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(revisions.mesh_config(rev)))
    state.mesh_config.parent.mkdir(parents=True, exist_ok=True)
    state.mesh_config.write_text(yaml.safe_dump({"proxyVersion": "0.1.0"}))
    backend = LocalBackend(state, None)  # type: ignore[arg-type]  # no control plane asked
    monkeypatch.setattr(backend, "status", lambda: {"revisions": [{"name": "canary-1"}]})
    want = backend.expected("canary-1")
    assert (want.proxy_version, want.revision) == ("0.2.0", "canary-1")
    assert backend.expected("").proxy_version == backend.expected("default").proxy_version == "0.1.0"
    with pytest.raises(UpgradeError, match=r"--revision 'canary-2': no such revision runs on the "
                                           r"local cluster \(running: default, canary-1;"):
        backend.expected("canary-2")
