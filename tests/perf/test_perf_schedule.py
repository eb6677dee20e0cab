"""perf/bench's pure scheduling and pairing logic: the order repetitions run in, latency added
over direct round by round, merging a scenario's rounds, the run's wall-time record, and which
scenarios `make bench` runs against `make bench-full`. No root, no processes."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))  # perf/ is not an installed package

from perf.bench import pairs, phases, report  # noqa: E402


def _round(p50: float, p99: float, *, vcpu: float = 0.1, rss: float = 30.0) -> dict:
    pcts = {"p50_ms": p50, "p90_ms": (p50 + p99) / 2, "p99_ms": p99, "p999_ms": p99 * 2}
    return {"rate": 1000.0, "duration_s": 5, "connections": 4, "requests": 5000, "errors": 0,
            "status_codes": {"200": 5000}, "corrected": pcts,
            "service": {k: v / 2 for k, v in pcts.items()}, "cpu_steal_share": 0.05,
            "vcpu_per_1k_rps": {"proxy-client": vcpu}, "rss_load_mb": {"proxy-client": rss}}


def test_schedule_alternates_scenarios_within_each_round() -> None:
    assert pairs.schedule(["direct", "haproxy", "mesh"], 2) == [
        (0, "direct"), (0, "haproxy"), (0, "mesh"), (1, "direct"), (1, "haproxy"), (1, "mesh")]
    assert pairs.schedule(["mesh"], 1) == [(0, "mesh")]


def test_base_drops_only_the_kind_suffix() -> None:
    assert [pairs.base(n) for n in ("mesh-h2", "haproxy-grpc", "direct-tcp", "mesh",
                                    "mesh-telemetry")] == [
        "mesh", "haproxy", "direct", "mesh", "mesh-telemetry"]


def test_mesh_telemetry_is_not_taken_for_mesh_in_ratios() -> None:
    got = pairs.pair_ratios("http1", {"mesh": [{"rps": 50.0}], "mesh-telemetry": [{"rps": 10.0}],
                                      "haproxy": [{"rps": 100.0}]})
    assert [(r["ratio"], r["median"]) for r in got] == [("mesh/haproxy", 0.5)]


def test_latency_added_is_taken_round_by_round_with_every_round_kept() -> None:
    rounds = {"direct": [_round(0.3, 2.0), _round(0.3, 6.0), _round(0.4, 3.0)],
              "haproxy": [_round(0.5, 2.5), _round(0.6, 6.2), _round(0.5, 3.9)],
              "mesh": [_round(0.9, 3.0), _round(1.0, 9.0), _round(1.1, 3.5)]}
    added = pairs.latency_added(rounds)
    p99 = pairs.find_added(added, "mesh", "p99_ms")
    assert p99["pairs"] == pytest.approx([1.0, 3.0, 0.5])  # the outlier round stays in
    assert p99["median"] == pytest.approx(1.0) and p99["max"] == pytest.approx(3.0)
    ha = pairs.find_added(added, "haproxy", "p99_ms")
    assert ha["pairs"] == pytest.approx([0.5, 0.2, 0.9])
    svc = pairs.find_added(added, "mesh", "p99_ms", "service")
    assert svc["median"] == pytest.approx(0.5)
    assert {a["percentile"] for a in added} == set(pairs.PERCENTILES)
    assert pairs.latency_added({"mesh": rounds["mesh"]}) == []  # no direct: nothing to subtract


def test_merge_rounds_takes_medians_sums_counts_and_peak_rss() -> None:
    merged = pairs.merge_rounds([_round(0.3, 2.0, vcpu=0.1, rss=30),
                                 _round(0.5, 9.0, vcpu=0.3, rss=33),
                                 _round(0.4, 3.0, vcpu=0.2, rss=31)])
    assert merged["corrected"]["p99_ms"] == 3.0 and merged["corrected"]["p50_ms"] == 0.4
    assert merged["requests"] == 15000 and merged["status_codes"] == {"200": 15000}
    assert merged["duration_s"] == 15 and len(merged["rounds"]) == 3
    assert merged["vcpu_per_1k_rps"] == {"proxy-client": 0.2}
    assert merged["rss_load_mb"] == {"proxy-client": 33}


def test_wall_time_record_and_summary() -> None:
    clock = phases.Clock()
    clock.add("http1", "measured", 45.0)
    clock.add("http1", "setup", 10.0)
    clock.add("h2", "measured", 50.0)
    with clock.phase("h2", "teardown"):
        pass
    rec = clock.record()
    assert rec["by_family"]["http1"] == {"measured": 45.0, "setup": 10.0}
    text = phases.summary({**rec, "total_s": 110.0})
    assert text.startswith("Wall time 110 s; by phase: setup 10, measured 95, teardown 0")
    assert "by family: http1 55, h2 50" in text


def test_report_headlines_the_p99_added_with_its_rounds_and_haproxys() -> None:
    rounds = {"direct": [_round(0.3, 2.0), _round(0.3, 6.0)],
              "haproxy": [_round(0.5, 2.5), _round(0.6, 6.5)],
              "mesh": [_round(0.9, 3.0), _round(1.0, 6.4)]}
    scen = []
    for name, rs in rounds.items():
        procs = {} if name == "direct" else {f"{name}-client": 25.0}
        scen.append({"scenario": name, "kind": "http1", "rss_idle_mb": procs,
                     "throughput": {"rps_median": 1000.0, "rps_runs": [1000.0], "errors": 0,
                                    "cpu_s_per_1k_req": {}, "rss_peak_mb": {}},
                     "latency": {**pairs.merge_rounds(rs), "vcpu_per_1k_rps": {},
                                 "rss_load_mb": dict(procs)}})
    results = {"machine": {}, "params": {}, "scenarios": scen,
               "latency_added": pairs.latency_added(rounds)}
    p99 = next(t for t in report.targets(results) if t["target"].startswith("p99"))
    assert p99["measured"] == ("+0.70 ms (rounds +0.40 to +1.00), median of 2 rounds "
                               "(HAProxy pair: +0.50 ms (rounds +0.50 to +0.50))")
    assert p99["met"] is True
    md = report.markdown(results)
    assert "| mesh − direct | corrected | +0.65 (rounds +0.60 to +0.70) |" in md
    assert "Noise floor: direct's own corrected p99 ranged 2.00–6.00 ms over its 2 rounds" in md


def _perf_run():
    loader = importlib.machinery.SourceFileLoader("perf_run", str(REPO / "perf" / "run"))
    spec = importlib.util.spec_from_loader("perf_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_make_bench_runs_issue_15s_set_and_full_adds_the_rest() -> None:
    run = _perf_run()
    assert "cp" not in run.DEFAULT and "mesh-telemetry" not in run.DEFAULT
    for kind in ("", "-h2", "-grpc", "-tcp"):
        assert {f"direct{kind}", f"haproxy{kind}", f"mesh{kind}"} <= set(run.DEFAULT)
    assert set(run.ALL) == set(run.DEFAULT) | set(run.EXTRA)
    makefile = (REPO / "Makefile").read_text()
    assert "perf/run --full" in makefile and "bench-full:" in makefile


def test_p99_target_is_not_resolved_when_the_rounds_straddle_it() -> None:
    def added(*pairs_ms: float) -> dict:
        return {"pairs": list(pairs_ms), "median": sorted(pairs_ms)[len(pairs_ms) // 2],
                "min": min(pairs_ms), "max": max(pairs_ms)}

    assert report.p99_verdict(added(0.2, 0.9, 0.5)) is True
    assert report.p99_verdict(added(1.2, 3.0, 1.5)) is False
    assert report.p99_verdict(added(-4.0, 0.5, 6.0)) is None  # median within, rounds are not
    assert report.p99_verdict(added(0.5, 1.5, 2.0)) is None  # median over, one round within


def test_http1_cpu_cell_carries_the_kernel_share() -> None:
    thr = {"cpu_s_per_1k_req": {"proxy-client": 0.056, "proxy-server": 0.054},
           "kernel_share_of_cpu": {"proxy-client": 0.37, "proxy-server": 0.4}}
    assert report._cpu_split(thr) == "client: 0.056 (kernel 37%), server: 0.054 (kernel 40%)"
    assert report._cpu_split({"cpu_s_per_1k_req": {}}) == "—"
