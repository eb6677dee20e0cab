"""The must-show canary revision flow (docs/upgrade.md), on the local cluster with the sample app
under its load generator's steady load, measured from start to end:

default -> canary-1 (simulated release 0.2.0) -> canary-2 (0.3.0). For each new revision: add it,
move namespace ``demo`` to it by its ``remora.dev/rev`` label, ``remoractl upgrade --revision``
restarts the workloads whose pods belong to another revision, and every restarted proxy reports
the new version and is SYNCED on the new revision's control plane. Then the old revision
(canary-1), which no proxy uses any more, is removed. The default revision cannot be the one
removed here: it is the local cluster's own control plane and injector (the daemon's), which
also serve the load generator (a bare pod, which ``upgrade`` reports and never restarts). Zero
failed requests throughout, by the load generator's proxy's own response-code counts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lc_kit import REMORACTL, LocalCluster, sample_cluster

from control_plane.api.ports import MONITORING_PORT
from local_cluster import nsutil
from local_cluster.netns import GATEWAY
from local_cluster.testing import sample

pytestmark = [pytest.mark.root, pytest.mark.slow]
APPS = {"web", "catalog", "reviews-v1", "reviews-v2"}
MOVE = """
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{remora.dev/inject: enabled, remora.dev/rev: {rev}}}}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with sample_cluster(tmp_path_factory.mktemp("canary") / "state") as lc:
        yield lc


def monitoring(lc: LocalCluster, rev: str) -> int:
    """The port of revision ``rev``'s control-plane monitoring (it listens on the gateway)."""
    (found,) = [r for r in lc.status()["revisions"] if r["name"] == rev]
    port = urllib.parse.urlsplit(found["controlPlaneMonitoring"]).port
    assert port is not None
    return port


def demo_proxies(lc: LocalCluster, port: int) -> dict[str, dict[str, Any]]:
    """Proxies of namespace demo connected to the control plane on ``port``, by pod."""
    node = lc.status()["node"]["netns"]
    code, body = asyncio.run(nsutil.http_get_in(node, str(GATEWAY), port, "/debug/proxies", timeout=5))
    assert code == 200
    return {p["pod"]: p for p in json.loads(body)["proxies"] if p["namespace"] == "demo"}


def move_and_upgrade(lc: LocalCluster, tmp: Path, rev: str, version: str) -> None:
    out = lc.ok("revision", "add", rev, "--version", version)
    assert out.startswith(f"revision {rev} (version {version})"), out
    lc.apply(MOVE.format(rev=rev), "demo")
    old = {p["name"] for p in sample.pods(lc.state) if p["workload"] in APPS}
    res = lc_upgrade(lc, tmp, "--revision", rev, "--max-unavailable", "2", "--observe", "1",
                     "--timeout", "60")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"target: proxy {version}, template " in res.stdout and f"revision {rev}" in res.stdout
    assert "4 workload(s) to restart in 2 wave(s)" in res.stdout, res.stdout
    assert "not restarted: pod demo/loadgen" in res.stdout, res.stdout
    pods = [p for p in sample.pods(lc.state) if p["workload"] in APPS and not p["terminating"]]
    assert len(pods) == 4 and not {p["name"] for p in pods} & old
    assert all(p["proxyVersion"] == version for p in pods), [p["proxyVersion"] for p in pods]
    seen = demo_proxies(lc, monitoring(lc, rev))
    assert set(seen) == {p["name"] for p in pods}, seen
    for p in pods:
        assert seen[p["name"]]["status"] == "SYNCED" and seen[p["name"]]["proxy_version"] == version
    # Nothing left to do for this revision.
    again = lc_upgrade(lc, tmp, "--revision", rev, "--dry-run")
    assert "0 workload(s) to restart" in again.stdout, again.stdout + again.stderr


def lc_upgrade(lc: LocalCluster, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REMORACTL, "upgrade", "--cluster", "local", "-n", "demo",
                           "--state-file", str(tmp / "upgrade.json"), *args],
                          env=lc.env, capture_output=True, text=True, timeout=300)


def test_canary_revisions_move_a_namespace_under_load_with_zero_failed_requests(
        cluster: LocalCluster, tmp_path: Path) -> None:
    before = sample.loadgen_codes(cluster.state)
    move_and_upgrade(cluster, tmp_path, "canary-1", "0.2.0")
    move_and_upgrade(cluster, tmp_path, "canary-2", "0.3.0")

    # The old revision serves no proxy any more (its proxy-status is empty): remove it. The
    # replaced pods drain before they leave (endpoints first, then SIGTERM and the drain time),
    # so wait for the last one, as an operator would.
    deadline = time.monotonic() + 60
    while (left := demo_proxies(cluster, monitoring(cluster, "canary-1"))) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == {}
    cluster.ok("revision", "remove", "canary-1")
    assert [r["name"] for r in cluster.status()["revisions"]] == ["canary-2"]
    # The default revision still serves the bare loadgen pod only.
    assert set(demo_proxies(cluster, MONITORING_PORT)) == {"loadgen"}

    mid = sample.loadgen_codes(cluster.state)
    codes = sample.codes_between(before, mid)
    assert sum(codes.values()) > 100 and set(codes) <= {"200"}, codes
    # Traffic keeps flowing, all of it answered, once the old revision is gone.
    deadline = time.monotonic() + 15
    while sum(sample.codes_between(mid, now := sample.loadgen_codes(cluster.state)).values()) < 20:
        assert time.monotonic() < deadline, sample.codes_between(mid, now)
        time.sleep(0.5)
    codes = sample.codes_between(before, now)
    assert set(codes) <= {"200"}, codes
