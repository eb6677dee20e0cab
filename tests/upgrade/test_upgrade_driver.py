"""The upgrade driver against an in-memory backend: waves in order, each gated; a failed gate
rolls that workload back and stops; an interrupted run resumes the wave in flight without
restarting it again. (The real thing, under load: tests/local_cluster/test_upgrade_e2e.py.)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from remoractl import upgrade
from remoractl import upgrade_plan as up
from remoractl.upgrade_plan import Expected, PodInfo, Workload

WANT = Expected("0.2.0", "new")


class FakeCluster:
    """Deployments of one pod each; a restart replaces the pod with one of the current proxy,
    unless the workload is listed in ``broken`` (its new pod never becomes Ready)."""

    name = "fake"

    def __init__(self, names: list[str], broken: set[str] = frozenset(),
                 failing: set[str] = frozenset()) -> None:
        self.version = {n: "0.1.0" for n in names}
        self.failing = failing  # new pods of these answer half their requests with 503
        self.scrapes = 0
        self.stamp = {n: "" for n in names}  # the template's restartedAt
        self.broken = broken
        self.calls: list[tuple[str, str]] = []

    def expected(self, revision: str) -> Expected:
        return WANT

    def pods(self, namespace: str | None, selector: dict[str, str]) -> list[PodInfo]:
        out = []
        for n, v in self.version.items():
            stamp = {"proxyVersion": v, "templateHash": "new" if v == "0.2.0" else "old"}
            ready = not (n in self.broken and v == "0.2.0")
            out.append(PodInfo("d", f"{n}-{v}", "Deployment", n, ready, stamp, {},
                               "Running" if ready else "Init:remora-proxy, 0/2 containers ready"))
        return out

    def restarted_at(self, w: Workload) -> str:
        return self.stamp[w.name]

    def restart(self, w: Workload) -> None:
        self.calls.append(("restart", w.name))
        self.stamp[w.name] = f"t{len(self.calls)}"
        self.version[w.name] = "0.2.0"

    def undo(self, w: Workload, previous: str) -> None:
        self.calls.append(("undo", w.name))
        self.stamp[w.name] = previous
        self.version[w.name] = "0.1.0"

    def rollout(self, w: Workload) -> tuple[bool, bool, str]:
        ok = not (w.name in self.broken and self.version[w.name] == "0.2.0")
        return ok, not ok, "ok" if ok else "progress deadline exceeded"

    def proxies(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {("d", f"{n}-{v}"): {"status": "SYNCED", "proxy_version": v}
                for n, v in self.version.items()}

    def metrics(self, pod: PodInfo) -> dict:
        self.scrapes += 1  # counters grow with every scrape: 10 requests each time
        bad = pod.owner_name in self.failing and pod.status["proxyVersion"] == "0.2.0"
        n = 10.0 * self.scrapes
        return {("remora_requests_total", (("direction", "inbound"), ("response_code", "200"))):
                n / 2 if bad else n,
                ("remora_requests_total", (("direction", "inbound"), ("response_code", "503"))):
                n / 2 if bad else 0.0}



def args(tmp: Path, **kw: Any) -> argparse.Namespace:
    base = dict(namespace=None, selector="", max_unavailable="1", dry_run=False, revision="",
                timeout=2.0, observe=0.0, error_tolerance=0.01, state_file=tmp / "state.json")
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upgrade, "POLL", 0.01)


def test_waves_run_in_order_and_everything_ends_current(tmp_path: Path, capsys) -> None:
    b = FakeCluster(["a", "b", "c"])
    assert upgrade.Upgrade(b, args(tmp_path, max_unavailable="2")).run() == 0
    assert b.calls == [("restart", "a"), ("restart", "b"), ("restart", "c")]
    out = capsys.readouterr().out
    assert "wave 1/2: restarted deployment/d/a, deployment/d/b" in out
    assert "wave 2/2: restarted deployment/d/c" in out and "upgrade complete" in out
    assert not (tmp_path / "state.json").exists()


def test_a_failed_gate_rolls_back_that_workload_and_stops(tmp_path: Path, capsys) -> None:
    b = FakeCluster(["a", "b", "c"], broken={"b"})
    assert upgrade.Upgrade(b, args(tmp_path)).run() == 1
    assert b.calls == [("restart", "a"), ("restart", "b"), ("undo", "b")]
    assert b.version == {"a": "0.2.0", "b": "0.1.0", "c": "0.1.0"}
    assert b.stamp["b"] == ""  # the previous template is back
    err = capsys.readouterr().err
    assert "wave 2 failed; rolled back deployment/d/b; later waves were not started" in err
    assert "rollout not complete (progress deadline exceeded)" in err
    assert "pod b-0.2.0: Init:remora-proxy, 0/2 containers ready" in err


def test_a_worse_error_rate_fails_the_gate_and_rolls_back(tmp_path: Path, capsys) -> None:
    b = FakeCluster(["a", "b"], failing={"a"})
    assert upgrade.Upgrade(b, args(tmp_path, observe=0.01)).run() == 1
    assert b.calls == [("restart", "a"), ("undo", "a")]
    err = capsys.readouterr().err
    assert "deployment/d/a: error rate 50.0% on the new pods vs 0.0% before" in err, err


def test_a_dry_run_changes_nothing(tmp_path: Path, capsys) -> None:
    b = FakeCluster(["a", "b"])
    assert upgrade.Upgrade(b, args(tmp_path, dry_run=True)).run() == 0
    assert b.calls == [] and "2 workload(s) to restart in 2 wave(s)" in capsys.readouterr().out


def test_an_interrupted_wave_is_judged_on_resume_not_restarted_again(tmp_path: Path, capsys) -> None:
    b = FakeCluster(["a", "b"])
    b.restart(Workload("Deployment", "d", "a"))  # restarted by the run that was interrupted
    b.calls.clear()
    up.State({"proxy_version": "0.2.0", "template_hash": "new", "revision": ""},
             [{"id": "deployment/d/a", "kind": "Deployment", "namespace": "d", "name": "a",
               "previous": ""}]).save(tmp_path / "state.json")
    assert upgrade.Upgrade(b, args(tmp_path)).run() == 0
    assert b.calls == [("restart", "b")]
    out = capsys.readouterr().out
    assert "resuming 1 in flight" in out and "resumed wave: passed" in out


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(up.UpgradeError, match="--max-unavailable '0'"):
        upgrade.Upgrade(FakeCluster(["a"]), args(tmp_path, max_unavailable="0"))
    with pytest.raises(up.UpgradeError, match="--selector 'app'"):
        upgrade.parse_selector("app")
