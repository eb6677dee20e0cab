"""``remoractl stat``: golden metrics per workload, from the proxies (like ``linkerd viz stat``).

Two scrapes of every proxy ``--window`` seconds apart; the rates, success rate (non-5xx) and
latency percentiles are what the servers' proxies counted in between (reporter
"destination"), so clients outside the mesh are included. Reads the local cluster
(``REMORA_LOCAL_DIR``) with no setup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from local_cluster import client, config
from remoractl import meshsource, meshview

COLUMNS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
           "TCP_CONN")
WIDE = ("READ_BYTES/SEC", "WRITE_BYTES/SEC")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("stat", help="golden metrics per workload, from the proxies",
                              description=__doc__)
    p.add_argument("-n", "--namespace", default=None, help="only this namespace (default: all)")
    p.add_argument("--window", type=float, default=5.0, help="seconds between the two scrapes")
    p.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
    return p


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def rows(snap: meshsource.Snapshot, view: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per workload that has pods, with its golden metrics (None without traffic)."""
    by_name = {w["workload"]: w for w in view["workloads"]}
    out = []
    for name in sorted({p["workload"] for p in snap.pods}):
        pods = [p for p in snap.pods if p["workload"] == name]
        w = by_name.get(name, {})
        out.append({
            "workload": name, "meshed": sum(p["meshed"] for p in pods), "pods": len(pods),
            "success": w.get("success"), "rps": w.get("rps", 0.0), "p50_ms": w.get("p50_ms"),
            "p95_ms": w.get("p95_ms"), "p99_ms": w.get("p99_ms"),
            "tcp_connections": int(w.get("tcp_connections", 0)),
            "tcp_read_bytes_per_s": w.get("tcp_read_bytes_per_s", 0.0),
            "tcp_write_bytes_per_s": w.get("tcp_write_bytes_per_s", 0.0),
        })
    return out


def table(data: list[dict[str, Any]], wide: bool) -> str:
    head = COLUMNS + (WIDE if wide else ())
    lines = [head]
    for r in data:
        cells = (r["workload"], f"{r['meshed']}/{r['pods']}", _pct(r["success"]),
                 f"{r['rps']:.1f}", _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["p99_ms"]),
                 str(r["tcp_connections"]))
        if wide:
            cells += (f"{r['tcp_read_bytes_per_s']:.1f}B/s", f"{r['tcp_write_bytes_per_s']:.1f}B/s")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


async def measure(source: meshsource.LocalSource, window: float) -> tuple[meshsource.Snapshot, dict]:
    first = await source.snapshot()
    await asyncio.sleep(window)
    second = await source.snapshot()
    return second, meshview.view(first.samples, second.samples, second.at - first.at)


def run(args: argparse.Namespace) -> int:
    if args.window <= 0:
        print(f"remoractl stat: --window {args.window}: accepted: seconds > 0", file=sys.stderr)
        return 1
    source = meshsource.LocalSource(config.StateDir.from_env(), args.namespace)
    try:
        snap, view = asyncio.run(measure(source, args.window))
    except client.ClusterError as e:
        print(f"remoractl stat: {e}", file=sys.stderr)
        return 1
    data = rows(snap, view)
    if args.output == "json":
        print(json.dumps({"window_s": round(view["window_s"], 3), "workloads": data,
                          "scrape_errors": snap.errors}, indent=2))
    else:
        print(table(data, args.output == "wide"))
        for pod, err in sorted(snap.errors.items()):
            print(f"remoractl stat: {pod}: not scraped: {err}", file=sys.stderr)
    return 0
