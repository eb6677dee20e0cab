"""Benchmark results: the JSON record, the Markdown table with targets, and the PNG chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

# Targets from the benchmark issue (anchors: Istio 1.20/1.24 sidecar, Linkerd's proxy).
TARGET_P99_ADDED_MS = 1.0
TARGET_THROUGHPUT_VS_HAPROXY = 0.60
TARGET_VCPU_PER_1K = 0.15
TARGET_RSS_IDLE_MB = 30.0
TARGET_RSS_LOAD_MB = 40.0


def machine() -> dict:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        rev = ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "git_revision": rev}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def markdown(results: dict) -> str:
    """One row per scenario; target cells carry met (✅) or missed (❌)."""
    by = {r["scenario"]: r for r in results["scenarios"] if "error" not in r}
    direct = by.get("direct")
    haproxy = by.get("haproxy")
    lines = [
        "| scenario | max req/s (median) | vs HAProxy | p50 / p90 / p99 at 1k req/s (ms) | p99 added over direct (ms) | vCPU per 1k req/s, each proxy | RSS idle / at 1k req/s (MB), each proxy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in by.items():
        thr = r.get("throughput", {}).get("rps_median")
        ratio = thr / haproxy["throughput"]["rps_median"] if haproxy and thr else None
        lat = r.get("latency", {}).get("service", {})
        added = (lat["p99_ms"] - direct["latency"]["service"]["p99_ms"]) if direct and lat else None
        is_mesh = name.startswith("mesh")
        vcpu = r.get("latency", {}).get("vcpu_per_1k_rps", {})
        rss_i = r.get("rss_idle_mb", {})
        rss_l = r.get("latency", {}).get("rss_load_mb", {})
        cpu_cell = ", ".join(
            f"{k}: {_fmt(v, 3)}{_mark(v <= TARGET_VCPU_PER_1K if is_mesh else None)}" for k, v in vcpu.items()
        ) or "—"
        rss_cell = ", ".join(
            f"{k}: {_fmt(rss_i.get(k), 1)}{_mark(rss_i.get(k, 0) <= TARGET_RSS_IDLE_MB if is_mesh else None)}"
            f" / {_fmt(rss_l.get(k), 1)}{_mark(rss_l.get(k, 0) <= TARGET_RSS_LOAD_MB if is_mesh else None)}"
            for k in rss_i
        ) or "—"
        lines.append(
            f"| {name} | {_fmt(thr, 0)} | "
            f"{_fmt(ratio) if ratio else '—'}{_mark(ratio >= TARGET_THROUGHPUT_VS_HAPROXY if is_mesh and ratio else None)} | "
            f"{' / '.join(_fmt(lat.get(k)) for k in ('p50_ms', 'p90_ms', 'p99_ms')) if lat else '—'} | "
            f"{_fmt(added)}{_mark(added <= TARGET_P99_ADDED_MS if is_mesh and added is not None else None)} | "
            f"{cpu_cell} | {rss_cell} |"
        )
    for r in results["scenarios"]:
        if "error" in r:
            lines.append(f"| {r['scenario']} | failed: {r['error'][:120]} | | | | | |")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> Path | None:
    """Latency percentiles and throughput side by side, one bar group per scenario."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in results["scenarios"] if "error" not in r and "latency" in r]
    if not rows:
        return None
    names = [r["scenario"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.25
    for i, pct in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        vals = [r["latency"]["service"][pct] for r in rows]
        ax1.bar([x + i * width for x in range(len(rows))], vals, width, label=pct.replace("_ms", ""))
    ax1.set_xticks([x + width for x in range(len(rows))], names, rotation=20)
    ax1.set_ylabel("ms")
    ax1.set_title(f"latency at {rows[0]['latency']['rate']:.0f} req/s")
    ax1.legend()
    ax2.bar(names, [r.get("throughput", {}).get("rps_median", 0) for r in rows], color="tab:green")
    ax2.set_ylabel("requests/s")
    ax2.set_title("max throughput (wrk, median)")
    ax2.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(results: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(markdown(results))
    png = chart(results, out_dir / f"{stem}.png")
    if png:
        paths["png"] = png
    return paths
