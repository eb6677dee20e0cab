"""perf/bench's pure parts: load-generator output parsers, the profile summary, the report's
targets (met/missed) and Markdown, from canned inputs (real tool output captured here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))  # perf/ is not an installed package

from perf.bench import bulk, profile, report  # noqa: E402
from perf.bench.h2load import parse_h2load  # noqa: E402
from perf.bench.wrk import parse_wrk  # noqa: E402

WRK = """Running 5s test @ http://198.18.0.3:8080/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   290.20us  101.33us   3.43ms   84.20%
    Req/Sec    55.41k     2.10k   58.50k    78.00%
  275612 requests in 5.00s, 326.08MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  55122.40
Transfer/sec:     65.22MB
"""
H2LOAD = """finished in 1.20s, 8652.00 req/s, 9.56MB/s
requests: 8652 total, 8652 started, 8652 done, 8650 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 8653 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_wrk_rate_and_errors() -> None:
    assert parse_wrk(WRK) == {"rps": 55122.40, "requests": 275612, "errors": 3}


def test_wrk_without_result_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no Requests/sec"):
        parse_wrk("unable to connect to 198.18.0.3:8080 Connection refused")


def test_h2load_rate_and_failures() -> None:
    assert parse_h2load(H2LOAD) == {"rps": 8652.0, "requests": 8650, "errors": 2}
    with pytest.raises(RuntimeError, match="no result"):
        parse_h2load("--warm-up-time: value error 0.5")


def test_curl_transfer_rate() -> None:
    r = bulk.parse_curl("1073741824 2.000000")
    assert r["bytes"] == 1 << 30 and r["mb_per_s"] == pytest.approx(536.87, rel=1e-3)
    with pytest.raises(RuntimeError, match="no size and time"):
        bulk.parse_curl("")


def test_profile_summary_excludes_idle_and_groups_by_kind(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(
        "run (sidecar/__main__.py:10);uv__io_poll (linux.c:1);epoll_pwait (libc.so.6) 60\n"
        "run (sidecar/__main__.py:10);flush (sidecar/http1.py:5);write (libc.so.6) 30\n"
        "run (sidecar/__main__.py:10);_head (sidecar/http1.py:9) 6\n"
        "run (sidecar/__main__.py:10);_head (sidecar/http1.py:12) 4\n")
    text = profile.summarize(raw, "t")
    assert "40 busy samples, 60 idle" in text
    assert "75.0  socket syscalls" in text and "25.0  proxy Python code" in text
    assert "25.0  _head (sidecar/http1.py)" in text  # two lines of one function add up


def _scenario(name: str, rps: float, p99: float, proxies: dict[str, float]) -> dict:
    return {"scenario": name, "kind": "http1", "rss_idle_mb": proxies,
            "throughput": {"rps_median": rps, "rps_runs": [rps], "errors": 0,
                           "cpu_s_per_1k_req": {k: 0.05 for k in proxies},
                           "rss_peak_mb": proxies},
            "latency": {"rate": 1000.0, "service": {"p50_ms": p99 / 3, "p90_ms": p99 / 2,
                                                    "p99_ms": p99},
                        "vcpu_per_1k_rps": {k: 0.1 for k in proxies},
                        "rss_load_mb": {k: v + 20 for k, v in proxies.items()}}}


def test_targets_met_and_missed() -> None:
    results = {"machine": {}, "params": {}, "scenarios": [
        _scenario("direct", 50000, 0.5, {}),
        _scenario("haproxy", 10000, 0.8, {"haproxy-client": 15.0}),
        _scenario("mesh", 5000, 1.2, {"proxy-client": 25.0, "proxy-server": 31.0}),
        {"scenario": "mesh-h2", "error": "h2load failed"}]}
    got = [(t["target"].split(" ")[:3], t["met"]) for t in report.targets(results)]
    assert got == [(["p99", "added", "by"], True),  # +0.7 ms
                   (["HTTP/1.1:", "mesh", "≥"], False),  # 50% of HAProxy
                   (["≤", "0.15", "vCPU"], True),
                   (["proxy", "RSS", "idle"], False),  # server side 31 MB
                   (["proxy", "RSS", "at"], False)]  # 51 MB under load
    md = report.markdown(results)
    assert "| ≤ 0.15 vCPU per 1,000 req/s per proxy | client: 0.100, server: 0.100 | ✅ |" in md
    assert "| mesh | 5,000 (5,000) | 0.50 ❌ |" in md
    assert "mesh-h2: failed: h2load failed" in md


def test_pair_ratios_are_taken_repetition_by_repetition() -> None:
    from perf.bench.pairs import pair_ratios

    reps = {"direct-h2": [{"rps": 100.0}, {"rps": 200.0}],
            "haproxy-h2": [{"rps": 50.0}, {"rps": 80.0}],
            "mesh-h2": [{"rps": 25.0}, {"rps": 60.0}]}
    got = {r["ratio"]: r for r in pair_ratios("h2", reps)}
    assert got["mesh/haproxy"]["pairs"] == [0.5, 0.75]
    assert got["mesh/haproxy"]["median"] == 0.625
    assert got["mesh/direct"]["pairs"] == [0.25, 0.3]
    assert got["haproxy/direct"]["min"] == 0.4 and got["haproxy/direct"]["max"] == 0.5
    tcp = pair_ratios("tcp", {"mesh-tcp": [{"mb_per_s": 300.0}], "haproxy-tcp": [{"mb_per_s": 600.0}]})
    assert [(r["ratio"], r["median"]) for r in tcp] == [("mesh/haproxy", 0.5)]


def test_issue_targets_from_pair_ratios() -> None:
    def ratio(kind: str, median: float) -> dict:
        return {"kind": kind, "ratio": "mesh/haproxy", "pairs": [median], "median": median,
                "min": median, "max": median}

    results = {"machine": {}, "params": {}, "scenarios": [],
               "ratios": [ratio("h2", 0.45), ratio("grpc", 0.3), ratio("tcp", 0.7)]}
    got = [(t["target"].split(":")[0], t["met"]) for t in report.targets(results)]
    assert got == [("HTTP/2 GET 1 KB", True), ("gRPC unary", False), ("opaque TCP", True)]
    md = report.markdown(results)
    assert "| grpc | mesh/haproxy | 0.30 | 0.30–0.30 | 0.30 |" in md


def test_telemetry_cost_is_a_ratio_against_mesh_of_the_same_run() -> None:
    proxies = {"proxy-client": 25.0, "proxy-server": 25.0}
    results = {"machine": {}, "params": {}, "scenarios": [
        _scenario("mesh", 5000, 1.2, proxies), _scenario("mesh-telemetry", 4500, 1.5, proxies)]}
    assert ("Telemetry cost (mesh-telemetry: tracing at 1% and access logs on, vs mesh: metrics "
            "only, same run): max req/s x0.90, p99 at 1k req/s x1.25.") in report.markdown(results)
    results["scenarios"].pop()
    assert "Telemetry cost" not in report.markdown(results)
