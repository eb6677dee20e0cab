"""The must-show upgrade tests: the sample app on the local cluster, under the loadgen's steady
load, upgraded by `remoractl upgrade`.

(a) A "next" proxy version (the injector's proxyVersion raised; the proxy code is the same and
    runs as that version, see docs/upgrade.md) rolls out in waves that respect
    --max-unavailable, with zero failed requests, every restarted proxy SYNCED on the new version;
    interrupted after its first wave, the command resumes where it stopped.
(b) A bad release (its proxies cannot reach the control plane, so they never become Ready)
    stops at the first wave, which is rolled back; the other workloads keep their pods; the exit
    code and message say what happened; traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lc_kit import REMORACTL, LocalCluster, local_cluster

from control_plane.api.ports import MONITORING_PORT
from local_cluster import nsutil
from local_cluster.netns import GATEWAY
from local_cluster.testing import sample

pytestmark = [pytest.mark.root, pytest.mark.slow]
APPS = {"web", "catalog", "reviews-v1", "reviews-v2"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("upgrade") / "state") as lc:
        sample.apply(lc.state)
        sample.wait_ready(lc.state, timeout=150)
        yield lc


def upgrade_argv(tmp: Path, *args: str) -> list[str]:
    return [REMORACTL, "upgrade", "--cluster", "local", "-n", "demo",
            "--state-file", str(tmp / "upgrade.json"), *args]


def upgrade(lc: LocalCluster, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(upgrade_argv(tmp, *args), env=lc.env, capture_output=True, text=True,
                          timeout=600)


def control_plane_proxies(lc: LocalCluster) -> dict[str, dict[str, Any]]:
    node = lc.status()["node"]["netns"]
    code, body = asyncio.run(nsutil.http_get_in(node, str(GATEWAY), MONITORING_PORT,
                                                "/debug/proxies", timeout=5))
    assert code == 200
    return {p["pod"]: p for p in json.loads(body)["proxies"] if p["namespace"] == "demo"}


class Watcher:
    """Samples the demo workloads while an upgrade runs: how many are mid-rollout at once, and
    whether any ever had no Ready pod."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc, self.stop = lc, threading.Event()
        self.max_rolling = 0
        self.unavailable: set[str] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            st = self.lc.status()
            rolling = [w["name"] for w in st["workloads"]
                       if w["namespace"] == "demo" and not w["complete"]]
            self.max_rolling = max(self.max_rolling, len(rolling))
            for w in st["workloads"]:
                if w["namespace"] == "demo" and w["readyReplicas"] == 0:
                    self.unavailable.add(w["name"])
            time.sleep(0.3)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_a_next_version_rolls_out_in_waves_with_zero_failed_requests(
        cluster: LocalCluster, tmp_path: Path) -> None:
    old = {p["name"] for p in sample.pods(cluster.state)}
    cluster.ok("injector", "--set", "proxyVersion=0.1.1")
    dry = upgrade(cluster, tmp_path, "--max-unavailable", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "4 workload(s) to restart in 2 wave(s)" in dry.stdout, dry.stdout
    assert "not restarted: pod demo/loadgen" in dry.stdout and "a bare pod" in dry.stdout
    assert {p["name"] for p in sample.pods(cluster.state)} == old  # a dry run changes nothing

    before = sample.loadgen_codes(cluster.state)
    cmd = ["--max-unavailable", "2", "--observe", "3", "--timeout", "120"]
    with Watcher(cluster) as watch:
        # Interrupted once the first wave is restarted, then run again: it resumes.
        proc = subprocess.Popen(upgrade_argv(tmp_path, *cmd), env=cluster.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = ""
        for line in proc.stdout:
            first += line
            if line.startswith("wave 1/2: restarted"):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, first + out + err
        assert "run the same command again to resume" in err
        assert (tmp_path / "upgrade.json").exists()
        res = upgrade(cluster, tmp_path, *cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming 2 in flight" in res.stdout and "resumed wave: passed" in res.stdout, res.stdout
    assert "2 workload(s) to restart in 1 wave(s)" in res.stdout, res.stdout
    assert watch.max_rolling <= 2, res.stdout
    assert not watch.unavailable, watch.unavailable
    codes = sample.codes_between(before, sample.loadgen_codes(cluster.state))
    assert sum(codes.values()) > 50 and set(codes) <= {"200"}, codes

    pods = [p for p in sample.pods(cluster.state) if p["workload"] in APPS]
    assert len(pods) == 4 and not {p["name"] for p in pods} & old
    assert all(p["proxyVersion"] == "0.1.1" for p in pods), [p["proxyVersion"] for p in pods]
    seen = control_plane_proxies(cluster)
    for p in pods:
        assert seen[p["name"]]["status"] == "SYNCED" and seen[p["name"]]["proxy_version"] == "0.1.1"
    again = upgrade(cluster, tmp_path, "--dry-run")
    assert "0 workload(s) to restart" in again.stdout, again.stdout
    assert not (tmp_path / "upgrade.json").exists()


def test_b_a_bad_release_stops_at_the_first_wave_and_rolls_back(
        cluster: LocalCluster, tmp_path: Path) -> None:
    pods = {p["workload"]: p["name"] for p in sample.pods(cluster.state)}
    cluster.ok("injector", "--set", "proxyVersion=0.1.2", "--set", "controlPlaneAddress=198.18.0.1:1")
    try:
        before = sample.loadgen_codes(cluster.state)
        res = upgrade(cluster, tmp_path, "--max-unavailable", "1", "--timeout", "15", "--observe", "2")
        assert res.returncode == 1, res.stdout + res.stderr
        first = "catalog"  # waves go in (namespace, kind, name) order
        assert f"wave 1 failed; rolled back deployment/demo/{first}" in res.stderr, res.stderr
        assert "later waves were not started" in res.stderr
        assert "rollout not complete" in res.stderr and f"pod {first}-" in res.stderr, res.stderr
        assert "wave 2/" not in res.stdout
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = {p["workload"]: p["name"] for p in sample.pods(cluster.state) if not p["terminating"]}
            if now == pods:
                break
            time.sleep(0.5)
        assert now == pods  # the failed wave's old pod was never removed; the rest untouched
        codes = sample.codes_between(before, sample.loadgen_codes(cluster.state))
        assert sum(codes.values()) > 20 and set(codes) <= {"200"}, codes
        assert not (tmp_path / "upgrade.json").exists()
    finally:
        cluster.ok("injector", "--set", "proxyVersion=0.1.1")
