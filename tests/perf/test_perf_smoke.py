"""Smoke test of the benchmark: `perf/run --quick` on the direct, mesh and mesh-h2 scenarios
writes a JSON record with every field, a Markdown table with the targets, the wall time by
phase, and a py-spy profile per proxy for HTTP/1.1 and HTTP/2. No timing asserts: the numbers
are whatever this machine gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent.parent


def test_quick_run_direct_and_mesh(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "perf" / "run"), "--quick", "--scenario",
                        "direct", "--scenario", "mesh", "--scenario", "mesh-h2", "--wait-quiet", "0",
                        "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr + r.stdout
    data = json.loads((tmp_path / "bench-latest.json").read_text())
    assert {"cpu", "cores", "kernel", "git_revision", "git_dirty"} <= data["machine"].keys()
    assert data["params"]["repeats"] == 1 and data["params"]["latency_rate"] == 1000
    by = {s["scenario"]: s for s in data["scenarios"]}
    assert set(by) == {"direct", "mesh", "mesh-h2"}
    assert by["mesh-h2"]["h2"]["rps_median"] > 0 and by["mesh-h2"]["h2"]["errors"] == 0
    assert set(data["wall_time"]["by_family"]) == {"http1", "h2"}
    assert {"setup", "measured", "latency", "teardown"} <= data["wall_time"]["by_family"]["http1"].keys()
    # One latency round each: mesh minus direct for every percentile, both timings.
    assert len([a for a in data["latency_added"] if a["ratio"] == "mesh-direct"]) == 8
    for s in (by["direct"], by["mesh"]):
        assert s["throughput"]["rps_median"] > 0 and s["throughput"]["errors"] == 0
        lat = s["latency"]
        assert {"p50_ms", "p90_ms", "p99_ms", "p999_ms"} <= lat["corrected"].keys()
        assert lat["service"]["p99_ms"] <= lat["corrected"]["p99_ms"]
        assert lat["requests"] > 0 and lat["errors"] == 0 and set(lat["status_codes"]) == {"200"}
    mesh = by["mesh"]
    proxies = {"proxy-client", "proxy-server"}
    for field in (mesh["rss_idle_mb"], mesh["throughput"]["cpu_s_per_1k_req"],
                  mesh["latency"]["vcpu_per_1k_rps"], mesh["latency"]["rss_load_mb"]):
        assert set(field) == proxies and all(v > 0 for v in field.values())
    # Latency layout per-pod (the default): the client pod's proxy on the load generator's core.
    assert mesh["latency"]["cores"] == {"proxy-client": [1], "proxy-server": [0]}
    # The pooled proxy-to-proxy connections are reused: no new handshakes under load.
    hs = mesh["throughput"]["server_tls_handshakes"]
    assert hs["before"] > 0 and hs["after"] == hs["before"]
    assert len(data["targets"]) == 4  # no HAProxy in this run: no throughput ratio
    md = (tmp_path / "bench-latest.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| mesh |")]
    assert len(rows) == 1 and rows[0].count("|") == 10, md
    assert "| target (mesh) | measured | met |" in md and md.count("✅") + md.count("❌") >= 4
    assert "| mesh − direct | corrected |" in md and "Wall time " in md
    assert (tmp_path / "bench-latest.png").stat().st_size > 0
    for name in ("mesh", "mesh-h2"):
        for side in ("client", "server"):
            text = (tmp_path / f"profile-{name}-proxy-{side}.txt").read_text()
            assert "busy samples" in text and "sidecar/" in text, text
