"""Run a family of scenarios: idle RSS, max throughput (repeated, median, alternating between
the family's scenarios), latency at a fixed rate (HTTP/1.1), CPU per unit of work.

What is measured depends on the family's kind: HTTP/1.1 (wrk + the fixed-rate client), HTTP/2
GET 1 KB and gRPC unary (h2load) or opaque TCP (one large transfer per repetition). Every
scenario of a family is set up first; then repetitions go A B C A B C ..., so that each
mesh/HAProxy and mesh/direct ratio is taken pair by pair, from runs a few seconds apart,
and the spread of those ratios says how much the machine's noise moved them. ``cp`` runs
perf/cp_scale.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from perf.bench import bulk, procstat, profile, quiet
from perf.bench.h2load import h2load_argv, parse_h2load
from perf.bench.pairs import latency_added, merge_rounds, pair_ratios, schedule
from perf.bench.phases import Clock
from perf.bench.scenarios import GRPC, H2, HTTP1, SCENARIOS, TCP, Target, fixed_rate_script
from perf.bench.topology import CLIENT_CORE, LOAD_UID, Topology, pin, python
from perf.bench.wrk import parse_wrk, wrk_argv

REPO = Path(__file__).resolve().parent.parent.parent
CP_SCRIPT = REPO / "perf" / "cp_scale.py"


@dataclass
class Params:
    duration: float = 5.0  # seconds per throughput repetition
    repeats: int = 3
    connections: int = 16
    latency_rate: float = 1000.0
    latency_duration: float = 5.0  # seconds per fixed-rate round
    latency_rounds: int = 3  # direct, haproxy, mesh, direct, haproxy, mesh, ...
    latency_warmup: float = 0.5
    latency_connections: int = 16  # keep-alive connections of the fixed-rate client
    latency_layout: str = "per-pod"  # client-side proxy on the load generator's core; or one-core
    warmup: float = 1.0
    h2_clients: int = 4
    h2_streams: int = 10
    bulk_repeats: int = 3
    cp_proxies: str = "100,1000,2000"
    cp_changes: int = 3
    profile_seconds: float = 5.0  # py-spy on each mesh proxy during an extra load run; 0: off
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


@dataclass
class _Running:
    """One scenario of a family, set up and waiting for its turn."""

    name: str
    topo: Topology
    target: Target
    rss_idle: dict[str, float]
    peaks: _Peaks
    reps: list[dict] = field(default_factory=list)
    handshakes_before: int | None = None


def _load_once(run: _Running, p: Params, seconds: float, warm: bool = False) -> dict:
    """One run of the family's load generator against ``run``'s target."""
    topo, target = run.topo, run.target
    if target.kind == HTTP1:
        argv = wrk_argv(target.url, seconds, p.connections, CLIENT_CORE)
        return parse_wrk(_exec(topo, argv, seconds + 60, "wrk"))
    if target.kind in (H2, GRPC):
        argv = h2load_argv(target.url, seconds, p.h2_clients, p.h2_streams, CLIENT_CORE,
                           0.5, grpc_body=target.grpc_body)
        return parse_h2load(_exec(topo, argv, seconds + 60, "h2load"))
    if warm:  # a bulk transfer needs no warm-up
        return {}
    return bulk.parse_curl(_exec(topo, bulk.curl_argv(target.url, CLIENT_CORE), 150, "curl"))


def _units(kind: str) -> tuple[Callable[[dict], float], float]:
    """What one repetition's work is counted in, and per how much of it CPU is reported."""
    if kind == TCP:
        return (lambda r: r["bytes"]), 1e9  # CPU s per GB
    return (lambda r: r["requests"]), 1000  # CPU s per 1,000 requests


def _prepare(name: str) -> _Running:
    topo = Topology.create()
    try:
        target = SCENARIOS[name](topo)
        time.sleep(0.5)
        idle = {k: procstat.rss_mb(pid) for k, pid in target.proxies.items()}
    except BaseException:
        topo.destroy()
        raise
    return _Running(name, topo, target, idle, _Peaks(target))


def _summary(run: _Running, p: Params) -> dict:
    """The aggregate of one scenario's repetitions, in the shape report.py reads."""
    target, reps = run.target, run.reps
    cpu = _median_cpu(target, reps)
    kernel = _median_cpu(target, reps, "kernel_share")
    if target.kind == TCP:
        return {"tcp": {"mb_per_s_median": statistics.median(r["mb_per_s"] for r in reps),
                        "mb_per_s_runs": [r["mb_per_s"] for r in reps],
                        "bytes_per_transfer": reps[0]["bytes"],
                        "how": f"{reps[0]['bytes'] / 2**30:g} GiB, {len(reps)} runs",
                        "cpu_s_per_gb": cpu, "kernel_share_of_cpu": kernel,
                        "rss_peak_mb": run.peaks.mb()}}
    common = {"rps_median": statistics.median(r["rps"] for r in reps),
              "rps_runs": [r["rps"] for r in reps], "errors": sum(r["errors"] for r in reps),
              "cpu_s_per_1k_req": cpu, "kernel_share_of_cpu": kernel,
              "rss_peak_mb": run.peaks.mb()}
    if target.kind in (H2, GRPC):
        what = "gRPC unary, 100-byte messages" if target.kind == GRPC else "GET 1 KB"
        common["how"] = (f"h2load -t1 -c{p.h2_clients} -m{p.h2_streams} -D{p.duration:g}, "
                         f"{what}, {len(reps)} runs")
        return {target.kind: common}
    common["wrk"] = f"-t1 -c{p.connections} -d{p.duration:g}s, {len(reps)} runs"
    if run.handshakes_before is not None and target.handshake_counter is not None:
        common["server_tls_handshakes"] = {"before": run.handshakes_before,
                                           "after": target.handshake_counter()}
    return {"throughput": common}


def run_family(kind: str, names: list[str], p: Params,
               clock: Clock | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Set up every scenario of one family, alternate their repetitions, then the extras
    (profiles of the mesh proxies, then the fixed-rate latency rounds, also alternating).
    Returns (scenario results, throughput ratios, latency added over direct)."""
    clock = clock or Clock()
    runs: list[_Running] = []
    results: list[dict] = []
    try:
        with clock.phase(kind, "setup"):
            # The family's pods start together: each mostly waits on its processes coming up.
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                futures = [(name, pool.submit(_prepare, name)) for name in names]
            for name, f in futures:
                try:
                    runs.append(f.result())
                except Exception as exc:  # one failed scenario must not lose the others' numbers
                    print(f"   {name}: setup failed: {exc}", file=sys.stderr)
                    results.append({"scenario": name, "kind": kind, "error": str(exc)})
        work, per = _units(kind)
        with clock.phase(kind, "warm-up"):
            for run in runs:
                _load_once(run, p, p.warmup, warm=True)
                if run.target.handshake_counter is not None:
                    run.handshakes_before = run.target.handshake_counter()
                run.peaks.__enter__()
        failed: dict[str, str] = {}
        by_name = {r.name: r for r in runs}
        with clock.phase(kind, "measured"):
            for _, name in schedule(list(by_name), p.bulk_repeats if kind == TCP else p.repeats):
                run = by_name[name]
                if name in failed:
                    continue
                try:
                    run.reps += _repeat(run.target, 1, partial(_load_once, run, p, p.duration),
                                        work, per)
                except Exception as exc:
                    failed[name] = str(exc)
        for run in runs:
            run.peaks.__exit__()
        ok = [r for r in runs if r.reps and r.name not in failed]
        profiles: dict[str, list[str]] = {}
        with clock.phase(kind, "profile"):
            for run in ok:
                if (kind in (HTTP1, H2) and run.target.python_proxies and p.profile_seconds > 0
                        and p.profile_dir):
                    profiles[run.name] = _profile(run.name, run.target, p,
                                                  partial(_load_once, run, p))
        latency: dict[str, list[dict]] = {}
        if kind == HTTP1:
            with clock.phase(kind, "latency"):
                latency = _latency_rounds(ok, p, failed)
        for run in runs:
            result: dict = {"scenario": run.name, "kind": kind, "url": run.target.url,
                            "rss_idle_mb": run.rss_idle}
            if run.name in failed or not run.reps:
                results.append({**result, "error": failed.get(run.name, "no repetition ran")})
                continue
            result.update(_summary(run, p))
            if run.name in profiles:
                result["profiles"] = profiles[run.name]
            if latency.get(run.name):
                result["latency"] = merge_rounds(latency[run.name])
            results.append(result)
        ratios = pair_ratios(kind, {r.name: r.reps for r in ok})
        return results, ratios, latency_added(latency)
    finally:
        with clock.phase(kind, "teardown"):
            _destroy_all([r.topo for r in runs])


def _destroy_all(topos: list[Topology]) -> None:
    """Tear the family's pods down together: each waits mostly on its processes exiting."""
    with ThreadPoolExecutor(max_workers=max(1, len(topos))) as pool:
        for f in [pool.submit(t.destroy) for t in topos]:
            try:
                f.result()
            except Exception as exc:  # leftovers are reported, the run goes on
                print(f"   teardown: {exc}", file=sys.stderr)


def _latency_rounds(runs: list[_Running], p: Params, failed: dict[str, str]) -> dict[str, list[dict]]:
    """Fixed-rate rounds, scenarios alternating (A B C A B C ...), so each round's latency
    added over direct is a pair a few seconds apart. ``per-pod`` layout: the client-side proxy
    moves to the load generator's core (each pod on its own core, as a node's CPU manager gives
    pods with whole CPUs); ``one-core``: every proxy stays with the app on core 0."""
    if p.latency_layout == "per-pod":
        for run in runs:
            for k, pid in run.target.proxies.items():
                if k.endswith("client"):
                    pin(pid, CLIENT_CORE)
    by_name = {r.name: r for r in runs}
    out: dict[str, list[dict]] = {}
    for _, name in schedule(list(by_name), p.latency_rounds):
        if name in failed:
            continue
        try:
            out.setdefault(name, []).append(_fixed_rate(by_name[name].topo, by_name[name].target, p))
        except Exception as exc:
            failed[name] = str(exc)
            out.pop(name, None)
    return out  # the pods are torn down next: no need to pin the proxies back


def _profile(name: str, target: Target, p: Params, load: Callable[[float], dict]) -> list[str]:
    """An extra load run with py-spy sampling each proxy (kept out of the measured runs)."""
    out_dir = Path(p.profile_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = {k: profile.start(pid, p.profile_seconds, out_dir / f"profile-{name}-{k}.raw")
             for k, pid in target.proxies.items()}
    time.sleep(0.3)  # py-spy attaches before the load starts
    load(p.profile_seconds)
    paths = []
    for k, spy in spies.items():
        _, err = spy.communicate(timeout=60)
        raw = out_dir / f"profile-{name}-{k}.raw"
        txt = out_dir / f"profile-{name}-{k}.txt"
        if not raw.exists():
            txt.write_text(f"py-spy recorded nothing: {err.strip()[-300:]}\n")
        else:
            load_how = (f"wrk -c{p.connections}" if target.kind == HTTP1
                        else f"h2load -c{p.h2_clients} -m{p.h2_streams}")
            txt.write_text(profile.summarize(raw, f"{name} {k}, {load_how}"))
            raw.unlink()
        paths.append(txt.name)
    return paths


def _fixed_rate(topo: Topology, target: Target, p: Params) -> dict:
    script = fixed_rate_script(topo)
    cpu0, steal0 = _cpu(target), quiet.steal_ticks()
    with _Peaks(target) as peaks:
        out = _exec(topo, ["taskset", "-c", str(CLIENT_CORE), python(), str(script), target.url,
                           "--rate", str(p.latency_rate), "--duration", str(p.latency_duration),
                           "--warmup", str(p.latency_warmup),
                           "--connections", str(p.latency_connections)],
                    p.latency_duration + 60, "fixed-rate client")
    cpu1, steal1 = _cpu(target), quiet.steal_ticks()
    lat = json.loads(out)
    lat["cpu_steal_share"] = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    # The client's warm-up is included in the CPU window: divide by the whole time.
    window = p.latency_duration + p.latency_warmup
    lat["vcpu_per_1k_rps"] = {k: (cpu1[k] - cpu0[k]) / window * (1000 / p.latency_rate)
                              for k in cpu0}
    lat["rss_load_mb"] = peaks.mb()
    # The cores each proxy was allowed during the round: the record shows the layout used.
    lat["cores"] = {k: sorted(os.sched_getaffinity(pid)) for k, pid in target.proxies.items()}
    return lat


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
    """One scenario on its own (a family of one)."""
    if name == "cp":
        return run_cp(p)
    from perf.bench.scenarios import kind_of

    results, _, _ = run_family(kind_of(name), [name], p)
    return results[0]
