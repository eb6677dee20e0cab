"""``remoractl stat``: golden metrics per workload, from the proxies (like ``linkerd viz stat``).

Two scrapes of every proxy ``--window`` seconds apart; the rates, success rate (non-5xx) and
latency percentiles are what the servers' proxies counted in between (reporter
"destination"), so clients outside the mesh are included. Reads the local cluster
(``REMORA_LOCAL_DIR``) with no setup, or a Prometheus that scrapes the proxies
(``--prometheus URL``: the increase over the last ``--window`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from remoractl import meshsource

COLUMNS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
           "TCP_CONN")
WIDE = ("READ_BYTES/SEC", "WRITE_BYTES/SEC")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("stat", help="golden metrics per workload, from the proxies",
                              description=__doc__)
    meshsource.add_arguments(p)
    p.add_argument("--window", type=float, default=5.0, help="seconds between the two scrapes")
    p.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
    return p


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per workload (with pods, or with traffic when pods are unknown: Prometheus),
    with its golden metrics (None without traffic)."""
    by_name = {w["workload"]: w for w in data["workloads"]}
    pods_of: dict[str, list] = {}
    for p in data["pods"]:
        pods_of.setdefault(p["workload"], []).append(p)
    out = []
    for name in sorted(pods_of or by_name):
        pods = pods_of.get(name, [])
        w = by_name.get(name, {})
        out.append({
            "workload": name, "meshed": sum(p["meshed"] for p in pods) if pods else None,
            "pods": len(pods) if pods else None,
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
        meshed = "-" if r["pods"] is None else f"{r['meshed']}/{r['pods']}"
        cells: tuple[str, ...] = (r["workload"], meshed, _pct(r["success"]),
                 f"{r['rps']:.1f}", _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["p99_ms"]),
                 str(r["tcp_connections"]))
        if wide:
            cells += (f"{r['tcp_read_bytes_per_s']:.1f}B/s", f"{r['tcp_write_bytes_per_s']:.1f}B/s")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


async def measure(source: meshsource.Source, window: float) -> dict[str, Any]:
    if isinstance(source, meshsource.LocalSource):  # rates need a second scrape
        await source.current(window + 60)
        await asyncio.sleep(window)
        return await source.current(window + 60)
    return await source.current(window)


def run(args: argparse.Namespace) -> int:
    if args.window <= 0:
        print(f"remoractl stat: --window {args.window}: accepted: seconds > 0", file=sys.stderr)
        return 1
    try:
        data = asyncio.run(measure(meshsource.from_args(args), args.window))
    except meshsource.SourceError as e:
        print(f"remoractl stat: {e}", file=sys.stderr)
        return 1
    out = rows(data)
    if args.output == "json":
        print(json.dumps({"source": data["source"], "window_s": round(data["window_s"], 3),
                          "workloads": out, "scrape_errors": data["scrape_errors"]}, indent=2))
    else:
        print(table(out, args.output == "wide"))
        for pod, err in sorted(data["scrape_errors"].items()):
            print(f"remoractl stat: {pod}: not scraped: {err}", file=sys.stderr)
    return 0
