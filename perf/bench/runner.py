"""Run one scenario: idle RSS, max throughput (repeated, median), latency at a fixed rate, CPU.

What is measured depends on the target's kind: HTTP/1.1 (wrk + the fixed-rate client), HTTP/2
(h2load) or opaque TCP (one large transfer per repetition). ``cp`` runs perf/cp_scale.py.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perf.bench import bulk, procstat, profile
from perf.bench.h2load import h2load_argv, parse_h2load
from perf.bench.scenarios import H2, HTTP1, SCENARIOS, TCP, Target, fixed_rate_script
from perf.bench.topology import CLIENT_CORE, LOAD_UID, Topology, python
from perf.bench.wrk import parse_wrk, wrk_argv

REPO = Path(__file__).resolve().parent.parent.parent
CP_SCRIPT = REPO / "perf" / "cp_scale.py"


@dataclass
class Params:
    duration: float = 5.0  # seconds per throughput repetition
    repeats: int = 3
    connections: int = 16
    latency_rate: float = 1000.0
    latency_duration: float = 10.0
    warmup: float = 2.0
    h2_clients: int = 4
    h2_streams: int = 10
    bulk_repeats: int = 3
    cp_proxies: str = "100,1000,2000"
    cp_changes: int = 3
    profile_seconds: float = 5.0  # py-spy on each mesh proxy during an extra wrk run; 0: off
    profile_dir: str = ""  # where profile-*.txt go


def _cpu(target: Target) -> dict[str, float]:
    return {k: procstat.cpu_seconds(pid) for k, pid in target.proxies.items()}


class _Peaks:
    """Peak RSS of every proxy while the ``with`` block runs."""

    def __init__(self, target: Target) -> None:
        self.samplers = {k: procstat.PeakRSS(pid) for k, pid in target.proxies.items()}

    def __enter__(self) -> _Peaks:
        for s in self.samplers.values():
            s.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for s in self.samplers.values():
            s.__exit__()

    def mb(self) -> dict[str, float]:
        return {k: s.peak for k, s in self.samplers.items()}


def _repeat(target: Target, n: int, once: Callable[[], dict], work: Callable[[dict], float],
            per: float) -> list[dict]:
    """Run ``once`` n times; each result gets proxy CPU seconds per ``per`` units of ``work``."""
    reps = []
    for _ in range(n):
        cpu0, sys0 = _cpu(target), _sys(target)
        r = once()
        cpu1, sys1 = _cpu(target), _sys(target)
        units = work(r) or 1.0
        r["cpu_s_per_unit"] = {k: (cpu1[k] - cpu0[k]) / units * per for k in cpu0}
        r["kernel_share"] = {k: (sys1[k] - sys0[k]) / max(1e-9, cpu1[k] - cpu0[k]) for k in cpu0}
        reps.append(r)
    return reps


def _sys(target: Target) -> dict[str, float]:
    return {k: procstat.system_seconds(pid) for k, pid in target.proxies.items()}


def _median_cpu(target: Target, reps: list[dict], key: str = "cpu_s_per_unit") -> dict[str, float]:
    return {k: statistics.median(r[key][k] for r in reps) for k in target.proxies}


def _exec(topo: Topology, argv: list[str], timeout: float, what: str) -> str:
    out = topo.client.exec(argv, uid=LOAD_UID, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return out.stdout


def _http1(name: str, topo: Topology, target: Target, p: Params) -> dict:
    def wrk(seconds: float) -> dict:
        argv = wrk_argv(target.url, seconds, p.connections, CLIENT_CORE)
        return parse_wrk(_exec(topo, argv, seconds + 60, "wrk"))

    wrk(p.warmup)
    hs0 = target.handshake_counter() if target.handshake_counter else None
    with _Peaks(target) as peaks:
        reps = _repeat(target, p.repeats, lambda: wrk(p.duration),
                       lambda r: r["requests"], 1000)
    thr = {"rps_median": statistics.median(r["rps"] for r in reps),
           "rps_runs": [r["rps"] for r in reps], "errors": sum(r["errors"] for r in reps),
           "cpu_s_per_1k_req": _median_cpu(target, reps), "rss_peak_mb": peaks.mb(),
           "kernel_share_of_cpu": _median_cpu(target, reps, "kernel_share"),
           "wrk": f"-t1 -c{p.connections} -d{p.duration:g}s, {p.repeats} runs"}
    if hs0 is not None:
        thr["server_tls_handshakes"] = {"before": hs0, "after": target.handshake_counter()}
    result = {"throughput": thr}
    if target.python_proxies and p.profile_seconds > 0 and p.profile_dir:
        result["profiles"] = _profile(name, target, p, wrk)
    result["latency"] = _fixed_rate(topo, target, p)
    return result


def _profile(name: str, target: Target, p: Params, wrk: Callable[[float], dict]) -> list[str]:
    """An extra wrk run with py-spy sampling each proxy (kept out of the measured runs)."""
    out_dir = Path(p.profile_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = {k: profile.start(pid, p.profile_seconds, out_dir / f"profile-{name}-{k}.raw")
             for k, pid in target.proxies.items()}
    time.sleep(0.3)  # py-spy attaches before the load starts
    wrk(p.profile_seconds)
    paths = []
    for k, spy in spies.items():
        _, err = spy.communicate(timeout=60)
        raw = out_dir / f"profile-{name}-{k}.raw"
        txt = out_dir / f"profile-{name}-{k}.txt"
        if not raw.exists():
            txt.write_text(f"py-spy recorded nothing: {err.strip()[-300:]}\n")
        else:
            txt.write_text(profile.summarize(raw, f"{name} {k}, wrk -c{p.connections}"))
            raw.unlink()
        paths.append(txt.name)
    return paths


def _fixed_rate(topo: Topology, target: Target, p: Params) -> dict:
    script = fixed_rate_script(topo)
    cpu0 = _cpu(target)
    with _Peaks(target) as peaks:
        out = _exec(topo, ["taskset", "-c", str(CLIENT_CORE), python(), str(script), target.url,
                           "--rate", str(p.latency_rate), "--duration", str(p.latency_duration)],
                    p.latency_duration + 60, "fixed-rate client")
    cpu1 = _cpu(target)
    lat = json.loads(out)
    # The client's 1 s warm-up is included in the CPU window: divide by the whole time.
    window = p.latency_duration + 1.0
    lat["vcpu_per_1k_rps"] = {k: (cpu1[k] - cpu0[k]) / window * (1000 / p.latency_rate)
                              for k in cpu0}
    lat["rss_load_mb"] = peaks.mb()
    return lat


def _h2(topo: Topology, target: Target, p: Params) -> dict:
    def h2load(seconds: float, warm: float) -> dict:
        argv = h2load_argv(target.url, seconds, p.h2_clients, p.h2_streams, CLIENT_CORE, warm)
        return parse_h2load(_exec(topo, argv, seconds + 60, "h2load"))

    h2load(1, 0.5)
    with _Peaks(target) as peaks:
        reps = _repeat(target, p.repeats, lambda: h2load(p.duration, 0.5),
                       lambda r: r["requests"], 1000)
    return {"h2": {"rps_median": statistics.median(r["rps"] for r in reps),
                   "rps_runs": [r["rps"] for r in reps], "errors": sum(r["errors"] for r in reps),
                   "cpu_s_per_1k_req": _median_cpu(target, reps), "rss_peak_mb": peaks.mb(),
                   "how": f"h2load -t1 -c{p.h2_clients} -m{p.h2_streams} -D{p.duration:g}, "
                             f"{p.repeats} runs"}}


def _tcp(topo: Topology, target: Target, p: Params) -> dict:
    def transfer() -> dict:
        return bulk.parse_curl(_exec(topo, bulk.curl_argv(target.url, CLIENT_CORE), 150, "curl"))

    with _Peaks(target) as peaks:
        reps = _repeat(target, p.bulk_repeats, transfer, lambda r: r["bytes"], 1e9)
    return {"tcp": {"mb_per_s_median": statistics.median(r["mb_per_s"] for r in reps),
                    "mb_per_s_runs": [r["mb_per_s"] for r in reps],
                    "bytes_per_transfer": reps[0]["bytes"],
                    "how": f"{reps[0]['bytes'] / 2**30:g} GiB, {p.bulk_repeats} runs",
                    "cpu_s_per_gb": _median_cpu(target, reps), "rss_peak_mb": peaks.mb()}}


def run_cp(p: Params) -> dict:
    """perf/cp_scale.py: change -> all simulated proxies ACKed, control-plane RSS per proxy."""
    with tempfile.TemporaryDirectory(prefix="remora-bench-cp-") as tmp:
        out = Path(tmp) / "cp.json"
        r = subprocess.run([python(), str(CP_SCRIPT), "--proxies", p.cp_proxies,
                            "--changes", str(p.cp_changes), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"cp_scale.py failed: {r.stderr.strip()[-400:]}")
        data = json.loads(out.read_text())
    return {"scenario": "cp", "kind": "cp", "cp": data["results"], "note": data.get("note", "")}


def run_scenario(name: str, p: Params) -> dict:
    if name == "cp":
        return run_cp(p)
    topo = Topology.create()
    try:
        target = SCENARIOS[name](topo)
        time.sleep(0.5)
        result: dict = {"scenario": name, "kind": target.kind, "url": target.url}
        result["rss_idle_mb"] = {k: procstat.rss_mb(pid) for k, pid in target.proxies.items()}
        if target.kind == HTTP1:
            result.update(_http1(name, topo, target, p))
        elif target.kind == H2:
            result.update(_h2(topo, target, p))
        elif target.kind == TCP:
            result.update(_tcp(topo, target, p))
        return result
    finally:
        topo.destroy()
