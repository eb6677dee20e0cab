#!/usr/bin/env python3
"""Direct vs the Remora pair vs the HAProxy pair in one run: a thin wrapper over
``perf/run --scenario direct --scenario haproxy --scenario mesh`` (kept for its command line).

    sudo .venv/bin/python perf/proxy_pair.py [--duration 5] [--repeats 3] [--rate 1000]
                                             [--latency-duration 5] [--out FILE.json]

Prints the Markdown table (targets met or not) and writes the full JSON record to ``--out``
(default perf/results/proxy_pair.json) and the py-spy summaries next to it. See perf/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="fixed-rate client req/s")
    ap.add_argument("--latency-duration", type=float, default=5.0,
                    help="seconds per fixed-rate round (3 rounds, alternating)")
    ap.add_argument("--out", type=Path, default=REPO / "perf" / "results" / "proxy_pair.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="remora-proxy-pair-") as tmp:
        r = subprocess.run([sys.executable, str(REPO / "perf" / "run"),
                            "--scenario", "direct", "--scenario", "haproxy", "--scenario", "mesh",
                            "--duration", str(a.duration), "--repeats", str(a.repeats),
                            "--rate", str(a.rate), "--latency-duration", str(a.latency_duration),
                            "--out", tmp], check=False)
        latest = Path(tmp) / "bench-latest.json"
        if not latest.exists():
            return r.returncode or 1
        a.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(latest, a.out)
        for prof in Path(tmp).glob("profile-*.txt"):
            shutil.copy(prof, a.out.parent / prof.name)
    print(f"written: {a.out}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
