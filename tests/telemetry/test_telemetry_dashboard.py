"""``remoractl stat`` and ``remoractl dashboard`` on the local cluster running the sample app;
the dashboard page is loaded in headless Chromium, which must draw the app's edges with
non-zero request rates."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from lc_kit import LocalCluster, sample_cluster

pytestmark = [pytest.mark.root, pytest.mark.slow]
REMORACTL = str(Path(sys.executable).parent / "remoractl")
CHROMIUM = shutil.which("chromium")
# The sample app's calls (examples/manifests): loadgen -> web -> catalog -> reviews v1/v2.
EDGES = {("loadgen.demo", "web.demo"), ("web.demo", "catalog.demo"),
         ("catalog.demo", "reviews-v1.demo"), ("catalog.demo", "reviews-v2.demo")}
EDGE_TAG = re.compile(r'<g class="edge[^"]*" data-source="([^"]+)" data-destination="([^"]+)" '
                      r'data-rps="([0-9.]+)"')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with sample_cluster(tmp_path_factory.mktemp("dash") / "state") as lc:
        yield lc


def ctl(lc: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REMORACTL, *args], env=lc.env, capture_output=True, text=True, timeout=60)


def test_stat_table_json_and_wide(cluster: LocalCluster) -> None:
    r = ctl(cluster, "stat", "-n", "demo", "--window", "3", "-o", "json")
    assert r.returncode == 0, r.stderr
    got = {w["workload"]: w for w in json.loads(r.stdout)["workloads"]}
    assert set(got) == {"loadgen.demo", "web.demo", "catalog.demo", "reviews-v1.demo", "reviews-v2.demo"}
    for name in ("web.demo", "catalog.demo", "reviews-v1.demo", "reviews-v2.demo"):
        w = got[name]
        assert (w["meshed"], w["pods"]) == (1, 1) and w["rps"] > 0 and w["success"] > 0.95, w
        assert 0 < w["p50_ms"] <= w["p95_ms"] <= w["p99_ms"], w
    assert got["loadgen.demo"]["rps"] == 0  # nothing calls the load generator
    wide = ctl(cluster, "stat", "-n", "demo", "--window", "1", "-o", "wide")
    head, *rows = wide.stdout.splitlines()
    assert head.split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95",
                            "LATENCY_P99", "TCP_CONN", "READ_BYTES/SEC", "WRITE_BYTES/SEC"]
    assert len(rows) == 5


def test_stat_without_a_cluster_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "REMORA_LOCAL_DIR": str(tmp_path / "none")}
    r = subprocess.run([REMORACTL, "stat"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "is not running" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make deps)")
def test_dashboard_in_headless_chromium_shows_the_edges(cluster: LocalCluster, tmp_path: Path) -> None:
    proc = subprocess.Popen([REMORACTL, "dashboard", "-n", "demo", "--port", "0", "--interval", "1",
                             "--window", "5"], env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        url = url.group(0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a window with traffic has been scraped
            with urllib.request.urlopen(url + "api/graph", timeout=5) as resp:
                data = json.load(resp)
            if {(e["source"], e["destination"]) for e in data["edges"] if e["rps"] > 0} >= EDGES:
                break
            time.sleep(1)
        assert {p["status"] for p in data["proxies"]} == {"SYNCED"}, data["proxies"]
        browser = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                   "--virtual-time-budget=5000", "--window-size=1180,1000"]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60)
        drawn = {(html.unescape(s), html.unescape(d)): float(rps)
                 for s, d, rps in EDGE_TAG.findall(dom.stdout)}
        assert set(drawn) >= EDGES, (drawn, dom.stderr[-2000:])
        assert all(drawn[e] > 0 for e in EDGES), drawn
        assert "SYNCED" in dom.stdout and "reviews-v1.demo" in dom.stdout
        shot = tmp_path / "dashboard.png"
        subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=60)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("REMORA_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, Path(__file__).resolve().parents[2] / "docs" / "dashboard.png")
    finally:
        proc.terminate()
        proc.wait(10)
