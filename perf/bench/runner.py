"""Run one scenario: idle RSS, max throughput (wrk, repeated), latency at a fixed rate, CPU."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

from perf.bench import procstat
from perf.bench.scenarios import SCENARIOS, fixed_rate_script
from perf.bench.topology import CLIENT_CORE, LOAD_UID, Topology, python
from perf.bench.wrk import parse_wrk, wrk_argv


@dataclass
class Params:
    duration: float = 5.0  # seconds per throughput repetition
    repeats: int = 3
    connections: int = 16
    latency_rate: float = 1000.0
    latency_duration: float = 10.0
    warmup: float = 2.0


def run_scenario(name: str, p: Params) -> dict:
    topo = Topology.create()
    try:
        target = SCENARIOS[name](topo)
        time.sleep(0.5)
        result: dict = {"scenario": name, "url": target.url}
        result["rss_idle_mb"] = {k: procstat.rss_mb(pid) for k, pid in target.proxies.items()}

        def wrk(seconds: float) -> dict:
            out = topo.client.exec(wrk_argv(target.url, seconds, p.connections, CLIENT_CORE),
                                   uid=LOAD_UID, timeout=seconds + 60)
            if out.returncode != 0:
                raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
            return parse_wrk(out.stdout)

        wrk(p.warmup)
        reps = []
        for _ in range(p.repeats):
            cpu0 = {k: procstat.cpu_seconds(pid) for k, pid in target.proxies.items()}
            r = wrk(p.duration)
            cpu1 = {k: procstat.cpu_seconds(pid) for k, pid in target.proxies.items()}
            total = r["rps"] * p.duration
            r["cpu_s_per_1k_req"] = {k: (cpu1[k] - cpu0[k]) / total * 1000 for k in cpu0}
            reps.append(r)
        result["throughput"] = {
            "rps_median": statistics.median(r["rps"] for r in reps),
            "rps_runs": [r["rps"] for r in reps],
            "errors": sum(r["errors"] for r in reps),
            "cpu_s_per_1k_req": {k: statistics.median(r["cpu_s_per_1k_req"][k] for r in reps)
                                 for k in target.proxies},
        }

        script = fixed_rate_script(topo)
        cpu0 = {k: procstat.cpu_seconds(pid) for k, pid in target.proxies.items()}
        samplers = {k: procstat.PeakRSS(pid) for k, pid in target.proxies.items()}
        for s in samplers.values():
            s.__enter__()
        try:
            out = topo.client.exec(
                ["taskset", "-c", str(CLIENT_CORE), python(), str(script), target.url,
                 "--rate", str(p.latency_rate), "--duration", str(p.latency_duration)],
                uid=LOAD_UID, timeout=p.latency_duration + 60,
            )
        finally:
            for s in samplers.values():
                s.__exit__()
        cpu1 = {k: procstat.cpu_seconds(pid) for k, pid in target.proxies.items()}
        if out.returncode != 0:
            raise RuntimeError(f"fixed-rate client failed: {out.stderr}")
        lat = json.loads(out.stdout)
        # The client's 1 s warm-up is included in the CPU window: divide by the whole time.
        window = p.latency_duration + 1.0
        lat["vcpu_per_1k_rps"] = {k: (cpu1[k] - cpu0[k]) / window * (1000 / p.latency_rate)
                                  for k in cpu0}
        lat["rss_load_mb"] = {k: s.peak for k, s in samplers.items()}
        result["latency"] = lat
        return result
    finally:
        topo.destroy()
