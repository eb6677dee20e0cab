#!/usr/bin/env python3
"""HTTP/2 proxy CPU per request, two builds interleaved (A B A B): for a relay change that
must be judged on a busy, shared machine, where req/s is noise but CPU seconds per request
of the proxy processes is not.

    sudo .venv/bin/python perf/h2_ab.py --a /path/to/base/.venv/bin/python [--kind h2|grpc]
        [--repeats 4] [--duration 4] [--profile DIR]

Each build gets its own meshed pod pair (perf/bench's ``mesh_pair``, every milestone feature
on: metrics, header policy, XFCC, STRICT mTLS), from the virtualenv given (``--a``; ``--b``
defaults to this interpreter). Prints, per repetition and as medians, h2load's req/s and the
CPU seconds (user+sys) per 1,000 requests of each proxy. ``--profile DIR`` adds one py-spy
run of build B's proxies (profile-mesh-<kind>-proxy-{client,server}.txt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.bench import procstat, profile  # noqa: E402
from perf.bench.h2load import h2load_argv, parse_h2load  # noqa: E402
from perf.bench.scenarios import GRPC, H2, mesh_pair  # noqa: E402
from perf.bench.topology import CLIENT_CORE, LOAD_UID, Topology  # noqa: E402


def _setup(python: str, kind: str, env: dict[str, str] | None = None):
    os.environ["REMORA_BENCH_PYTHON"] = python  # mesh_pair starts the proxies from its venv
    topo = Topology.create()
    try:
        return topo, mesh_pair(topo, kind, env)
    except BaseException:
        topo.destroy()
        raise


def _load(topo, target, seconds: float) -> dict:
    argv = h2load_argv(target.url, seconds, 4, 10, CLIENT_CORE, 0.5, grpc_body=target.grpc_body)
    out = topo.client.exec(argv, uid=LOAD_UID, timeout=seconds + 60)
    return parse_h2load(out.stdout)


def _io(pid: int) -> tuple[int, int]:
    """read and write syscalls so far (/proc/PID/io: syscr, syscw)."""
    f = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(f["syscr"]), int(f["syscw"])


def _cpu(target) -> dict[str, tuple[float, float, int, int]]:
    return {k: (procstat.cpu_seconds(pid), procstat.system_seconds(pid), *_io(pid))
            for k, pid in target.proxies.items()}


def _run(topo, target, seconds: float) -> dict:
    c0 = _cpu(target)
    r = _load(topo, target, seconds)
    c1 = _cpu(target)
    n = max(1, r["requests"])
    r["cpu"] = {k: (c1[k][0] - c0[k][0]) / n * 1000 for k in c0}
    r["sys"] = {k: (c1[k][1] - c0[k][1]) / n * 1000 for k in c0}
    r["rw"] = {k: ((c1[k][2] - c0[k][2]) / n, (c1[k][3] - c0[k][3]) / n) for k in c0}
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="build A's interpreter (its venv's bin/python)")
    ap.add_argument("--b", default=sys.executable, help="build B's interpreter (default: this)")
    ap.add_argument("--kind", choices=(H2, GRPC), default=H2)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--profile", type=Path, help="py-spy build B's proxies into this directory")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for build B's proxies only (A/B of a setting)")
    a = ap.parse_args()
    if any("=" not in e for e in a.b_env):
        ap.error("--b-env takes NAME=VALUE")
    builds = {"A": _setup(a.a, a.kind)}
    try:
        builds["B"] = _setup(a.b, a.kind, dict(e.split("=", 1) for e in a.b_env))
        for topo, target in builds.values():
            _load(topo, target, 1.0)  # warm up: pools, TLS sessions
        runs: dict[str, list[dict]] = {"A": [], "B": []}
        for i in range(a.repeats):
            for name, (topo, target) in builds.items():
                r = _run(topo, target, a.duration)
                runs[name].append(r)
                cpu = " ".join(f"{k} {v:.4f} (sys {r['sys'][k]:.4f}, reads {r['rw'][k][0]:.2f} "
                               f"writes {r['rw'][k][1]:.2f} per req)" for k, v in r["cpu"].items())
                print(f"{i} {name}: {r['rps']:8.0f} req/s, errors {r['errors']}, "
                      f"CPU s/1k req: {cpu}", flush=True)
        for name, reps in runs.items():
            med = {k: statistics.median(r["cpu"][k] for r in reps) for k in reps[0]["cpu"]}
            rps = statistics.median(r["rps"] for r in reps)
            print(f"median {name}: {rps:.0f} req/s, CPU s/1k req: "
                  + " ".join(f"{k} {v:.4f}" for k, v in med.items()))
        if a.profile:
            topo, target = builds["B"]
            a.profile.mkdir(parents=True, exist_ok=True)
            stem = f"profile-mesh-{a.kind}"
            spies = {k: profile.start(pid, 5, a.profile / f"{stem}-{k}.raw")
                     for k, pid in target.proxies.items()}
            time.sleep(0.3)
            _load(topo, target, 5)
            for k, spy in spies.items():
                spy.communicate(timeout=60)
                raw = a.profile / f"{stem}-{k}.raw"
                (a.profile / f"{stem}-{k}.txt").write_text(
                    profile.summarize(raw, f"mesh-{a.kind} {k}, h2load -c4 -m10", top=40))
                raw.unlink()
    finally:
        for topo, _ in builds.values():
            topo.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
