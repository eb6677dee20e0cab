"""Benchmark results: the JSON record, the Markdown table with targets, and the PNG chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from perf.bench import phases
from perf.bench.pairs import find_added

# Targets from the benchmark issue (anchors: Istio 1.20/1.24 sidecar, Linkerd's proxy).
TARGET_P99_ADDED_MS = 1.0
TARGET_THROUGHPUT_VS_HAPROXY = 0.60
TARGET_VCPU_PER_1K = 0.15
TARGET_RSS_IDLE_MB = 30.0
TARGET_RSS_LOAD_MB = 40.0
TARGET_H2_VS_HAPROXY = 0.40  # HTTP/2 GET 1 KB and gRPC unary, each
TARGET_TCP_VS_HAPROXY = 0.60


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
    try:  # numbers from uncommitted code say so
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        dirty = None
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "git_revision": rev, "git_dirty": dirty,
            "load_average_at_start": os.getloadavg()}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def _each(values: dict[str, float], digits: int, limit: float | None = None) -> str:
    """"client: 1.2 ✅, server: 1.3 ✅" (proxy names without the "proxy-" prefix)."""
    return ", ".join(
        f"{k.removeprefix('proxy-')}: {_fmt(v, digits)}"
        f"{_mark(v <= limit if limit is not None else None)}" for k, v in values.items()
    ) or "—"


def _ok(r: dict) -> dict[str, dict]:
    return {x["scenario"]: x for x in r["scenarios"] if "error" not in x}


def _pair_ratio(results: dict, kind: str, ratio: str) -> dict | None:
    for r in results.get("ratios", []):
        if r["kind"] == kind and r["ratio"] == ratio:
            return r
    return None


def _ratio_text(r: dict) -> str:
    return f"{r['median']:.2f} (pairs {r['min']:.2f}–{r['max']:.2f})"


def p99_verdict(a: dict, limit: float = TARGET_P99_ADDED_MS) -> bool | None:
    """Met only if every round's difference is within ``limit``, missed only if none is; when
    the rounds straddle the limit this machine did not resolve it (None), whatever the median."""
    if a["max"] <= limit:
        return True
    return False if a["min"] > limit else None


def _verdict(met: bool | None) -> str:
    return "❔ not resolved (rounds straddle the target)" if met is None else "✅" if met else "❌"


def _added_text(a: dict, unit: str = " ms") -> str:
    """"+0.42 ms (rounds +0.30 to +0.61)": the median difference and the range of rounds."""
    if len(a["pairs"]) == 1:
        return f"{a['median']:+.2f}{unit}"
    return f"{a['median']:+.2f}{unit} (rounds {a['min']:+.2f} to {a['max']:+.2f})"


def _timing(lat: dict) -> dict:
    """The percentiles the tables show: corrected (from the scheduled send) where recorded."""
    return lat.get("corrected") or lat["service"]


def targets(results: dict) -> list[dict]:
    """The issues' targets for the mesh scenarios, each with its measured value and met or not.

    Throughput ratios are the median of the per-pair ratios (repetitions alternate), with the
    range of the pairs.
    """
    by = _ok(results)
    out: list[dict] = []

    def add(name: str, value: str, ok: bool | None) -> None:
        out.append({"target": name, "measured": value, "met": ok})

    for kind, title, goal in (("h2", "HTTP/2 GET 1 KB", TARGET_H2_VS_HAPROXY),
                              ("grpc", "gRPC unary", TARGET_H2_VS_HAPROXY),
                              ("tcp", "opaque TCP", TARGET_TCP_VS_HAPROXY)):
        r = _pair_ratio(results, kind, "mesh/haproxy")
        if r:
            add(f"{title}: mesh ≥ {goal:.0%} of the HAProxy pair's max throughput",
                _ratio_text(r), r["median"] >= goal)
    mesh, direct, ha = by.get("mesh"), by.get("direct"), by.get("haproxy")
    if not mesh:
        return out

    p99 = find_added(results.get("latency_added", []), "mesh", "p99_ms")
    if p99:
        ha99 = find_added(results["latency_added"], "haproxy", "p99_ms")
        rounds = len(p99["pairs"])
        add(f"p99 added by two proxies at {mesh['latency']['rate']:.0f} req/s "
            f"≤ {TARGET_P99_ADDED_MS:g} ms",
            f"{_added_text(p99)}, median of {rounds} round{'s' if rounds > 1 else ''}"
            + (f" (HAProxy pair: {_added_text(ha99)})" if ha99 else ""),
            p99_verdict(p99))
    elif direct:  # a record from before the latency rounds: one run each
        added = mesh["latency"]["service"]["p99_ms"] - direct["latency"]["service"]["p99_ms"]
        add(f"p99 added by two proxies at {mesh['latency']['rate']:.0f} req/s "
            f"≤ {TARGET_P99_ADDED_MS:g} ms", f"{added:+.2f} ms", added <= TARGET_P99_ADDED_MS)
    pair = _pair_ratio(results, "http1", "mesh/haproxy")
    if pair:
        add(f"HTTP/1.1: mesh ≥ {TARGET_THROUGHPUT_VS_HAPROXY:.0%} of the HAProxy pair's max "
            "throughput", f"{_ratio_text(pair)}; {mesh['throughput']['rps_median']:,.0f} vs "
            f"{ha['throughput']['rps_median']:,.0f} req/s" if ha else _ratio_text(pair),
            pair["median"] >= TARGET_THROUGHPUT_VS_HAPROXY)
    elif ha:
        ratio = mesh["throughput"]["rps_median"] / ha["throughput"]["rps_median"]
        add(f"HTTP/1.1: mesh ≥ {TARGET_THROUGHPUT_VS_HAPROXY:.0%} of the HAProxy pair's max "
            "throughput", f"{ratio:.2f} ({mesh['throughput']['rps_median']:,.0f} vs "
            f"{ha['throughput']['rps_median']:,.0f} req/s)", ratio >= TARGET_THROUGHPUT_VS_HAPROXY)
    vcpu = mesh["latency"]["vcpu_per_1k_rps"]
    add(f"≤ {TARGET_VCPU_PER_1K} vCPU per 1,000 req/s per proxy", _each(vcpu, 3),
        all(v <= TARGET_VCPU_PER_1K for v in vcpu.values()))
    idle = mesh["rss_idle_mb"]
    add(f"proxy RSS idle ≤ {TARGET_RSS_IDLE_MB:g} MB", _each(idle, 1),
        all(v <= TARGET_RSS_IDLE_MB for v in idle.values()))
    load = mesh["latency"]["rss_load_mb"]
    add(f"proxy RSS at {mesh['latency']['rate']:.0f} req/s ≤ {TARGET_RSS_LOAD_MB:g} MB",
        _each(load, 1), all(v <= TARGET_RSS_LOAD_MB for v in load.values()))
    return out


def _cpu_split(x: dict, key: str = "cpu_s_per_1k_req") -> str:
    """"client: 0.056 (kernel 45%), ...": CPU per unit of work and the stime part of it."""
    kernel = x.get("kernel_share_of_cpu", {})
    return ", ".join(
        f"{k.removeprefix('proxy-')}: {_fmt(v, 3)}"
        + (f" (kernel {kernel[k]:.0%})" if k in kernel else "") for k, v in x[key].items()) or "—"


def _http1_table(by: dict[str, dict], added: list[dict], results: dict) -> list[str]:
    direct, ha = by.get("direct"), by.get("haproxy")
    lines = [
        "| scenario | max req/s, median (runs) | vs HAProxy | vs direct "
        "| p50 / p90 / p99 / p99.9 at 1k req/s (ms) | added over direct p50 / p99 (ms) "
        "| CPU s per 1k req at max (kernel share), each proxy | vCPU per 1k req/s, each proxy "
        "| RSS idle / at 1k req/s / at max (MB), each proxy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in by.items():
        if r.get("kind", "http1") != "http1":
            continue
        mesh = name == "mesh"
        thr = r["throughput"]
        rps = thr["rps_median"]
        runs = ", ".join(f"{x:,.0f}" for x in thr["rps_runs"])
        # The pair-by-pair median where the run has one (as the targets use), else medians'.
        pair = _pair_ratio(results, "http1", f"{name}/haproxy")
        ratio = pair["median"] if pair else rps / ha["throughput"]["rps_median"] if ha else None
        pair = _pair_ratio(results, "http1", f"{name}/direct")
        vs_direct = (pair["median"] if pair
                     else rps / direct["throughput"]["rps_median"] if direct else None)
        lat = _timing(r["latency"])
        pcts = " / ".join(_fmt(lat.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"))
        added_cell = "—"
        a50, a99 = find_added(added, name, "p50_ms"), find_added(added, name, "p99_ms")
        if a50 and a99:
            added_cell = (f"{_added_text(a50, '')} / {_added_text(a99, '')}"
                          f"{' ' + _verdict(p99_verdict(a99)).split(' ')[0] if mesh else ''}")
        elif direct and name != "direct":
            d = _timing(direct["latency"])
            d99 = lat["p99_ms"] - d["p99_ms"]
            added_cell = (f"{lat['p50_ms'] - d['p50_ms']:+.2f} / {d99:+.2f}"
                          f"{_mark(d99 <= TARGET_P99_ADDED_MS if mesh else None)}")
        idle, load = r["rss_idle_mb"], r["latency"]["rss_load_mb"]
        peak = thr.get("rss_peak_mb", {})
        rss = ", ".join(
            f"{k.removeprefix('proxy-')}: {_fmt(idle[k], 1)}"
            f"{_mark(idle[k] <= TARGET_RSS_IDLE_MB if mesh else None)}"
            f" / {_fmt(load[k], 1)}{_mark(load[k] <= TARGET_RSS_LOAD_MB if mesh else None)}"
            f" / {_fmt(peak.get(k), 1)}" for k in idle) or "—"
        lines.append(
            f"| {name} | {rps:,.0f} ({runs}) "
            f"| {_fmt(ratio)}{_mark(ratio >= TARGET_THROUGHPUT_VS_HAPROXY if mesh and ratio else None)} "
            f"| {_fmt(vs_direct)} | {pcts} | {added_cell} | {_cpu_split(thr)} "
            f"| {_each(r['latency']['vcpu_per_1k_rps'], 3, TARGET_VCPU_PER_1K if mesh else None)} "
            f"| {rss} |")
    return lines


# HTTP/2, gRPC and opaque TCP: (kind, baseline scenario, title, rate column, its keys, CPU column).
_KIND_TABLES = (
    ("h2", "direct-h2", "HTTP/2 GET 1 KB (h2c prior knowledge to the app; mTLS between the proxies)",
     "req/s", "rps_median", "rps_runs", "CPU s per 1k req", "cpu_s_per_1k_req"),
    ("grpc", "direct-grpc", "gRPC unary, 100-byte messages (h2load POSTs a gRPC-framed body; the "
     "app answers with a gRPC-framed reply and grpc-status in trailers)",
     "req/s", "rps_median", "rps_runs", "CPU s per 1k req", "cpu_s_per_1k_req"),
    ("tcp", "direct-tcp", "Opaque TCP (one large transfer per run, curl to /dev/null)",
     "MB/s", "mb_per_s_median", "mb_per_s_runs", "CPU s per GB", "cpu_s_per_gb"),
)


def _other_tables(by: dict[str, dict]) -> list[str]:
    lines = []
    for kind, base_name, title, unit, median, runs, cpu_title, cpu in _KIND_TABLES:
        rows = [(n, r) for n, r in by.items() if r.get("kind") == kind]
        if not rows:
            continue
        base = by.get(base_name)
        lines += ["", f"{title}:", "",
                  f"| scenario | {unit}, median (runs) | vs direct | {cpu_title}, each proxy "
                  "| kernel share of that CPU | RSS idle / peak (MB), each proxy |",
                  "|---|---|---|---|---|---|"]
        for n, r in rows:
            x = r[kind]
            ratio = x[median] / base[kind][median] if base else None
            rss = ", ".join(f"{k.removeprefix('proxy-')}: {_fmt(v, 1)} / "
                            f"{_fmt(x['rss_peak_mb'].get(k), 1)}"
                            for k, v in r["rss_idle_mb"].items()) or "—"
            kernel = _each(x.get("kernel_share_of_cpu", {}), 2)
            lines.append(f"| {n} ({x['how']}) | {x[median]:,.0f} "
                         f"({', '.join(f'{v:,.0f}' for v in x[runs])}) | {_fmt(ratio)} "
                         f"| {_each(x[cpu], 3)} | {kernel} | {rss} |")
    cp = by.get("cp")
    if cp:
        lines += ["", "Control plane (simulated proxies over mTLS WebSocket; change = manifest "
                  "write, includes the 0.2 s file poll and 0.1 s debounce):", "",
                  "| proxies | change → all ACKed, median (max) s | control-plane RSS before / "
                  "connected (MB) | RSS per connected proxy (KB) |", "|---|---|---|---|"]
        for x in cp["cp"]:
            lines.append(f"| {x['proxies']:,} | {x['median_seconds']:.2f} ({x['max_seconds']:.2f}) "
                         f"| {x['control_plane_rss_mb_before']:.1f} / "
                         f"{x['control_plane_rss_mb_connected']:.1f} | {x['rss_kb_per_proxy']:.0f} |")
    return lines


def _telemetry_cost(by: dict[str, dict]) -> list[str]:
    """mesh-telemetry (tracing 1% + access logs) against mesh (metrics only), same run."""
    base, tel = by.get("mesh"), by.get("mesh-telemetry")
    if not base or not tel:
        return []
    rps = tel["throughput"]["rps_median"] / base["throughput"]["rps_median"]
    p99 = _timing(tel["latency"])["p99_ms"] / _timing(base["latency"])["p99_ms"]
    return ["", f"Telemetry cost (mesh-telemetry: tracing at 1% and access logs on, vs mesh: "
            f"metrics only, same run): max req/s x{rps:.2f}, p99 at 1k req/s x{p99:.2f}."]


def _latency_table(results: dict) -> list[str]:
    """Latency added over direct by each pair of proxies, every percentile, both timings."""
    added = results.get("latency_added", [])
    if not added:
        return []
    rows = {(a["ratio"], a["timing"]): a for a in added if a["percentile"] == "p50_ms"}
    lines = ["", "Latency added over direct at the fixed rate, round by round (rounds alternate "
             "direct / HAProxy / mesh; median of the rounds' differences and their range, ms; "
             "corrected = from each request's scheduled send, service = from its write):", "",
             "| difference | timing | p50 | p90 | p99 | p99.9 |", "|---|---|---|---|---|---|"]
    for ratio, timing in rows:
        cells = []
        for pct in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
            a = next((x for x in added if x["ratio"] == ratio and x["timing"] == timing
                      and x["percentile"] == pct), None)
            cells.append("—" if a is None else _added_text(a, ""))
        lines.append(f"| {ratio.replace('-', ' − ')} | {timing} | " + " | ".join(cells) + " |")
    direct = _ok(results).get("direct", {}).get("latency", {}).get("rounds", [])
    if len(direct) > 1:
        # What the instrument can resolve here: direct against itself, round to round.
        p99s = [_timing(r)["p99_ms"] for r in direct]
        steal = [r.get("cpu_steal_share", 0.0) for r in direct]
        lines += ["", f"Noise floor: direct's own corrected p99 ranged {min(p99s):.2f}–"
                  f"{max(p99s):.2f} ms over its {len(p99s)} rounds (CPU steal "
                  f"{min(steal):.0%}–{max(steal):.0%}); a difference smaller than that spread is "
                  "not resolved by this run."]
    return lines


def markdown(results: dict) -> str:
    """Targets first (✅ met, ❌ missed), then one table per kind of traffic."""
    by = _ok(results)
    m = results.get("machine", {})
    lines = [f"Run {results.get('started', '')}, git {m.get('git_revision', '')[:10]}, "
             f"{m.get('cores')} cores ({m.get('cpu', '')}), params: "
             + ", ".join(f"{k}={v}" for k, v in results.get("params", {}).items()
                         if k != "profile_dir")]
    busy = [f"{r['scenario']} {r['busy_before']:.0%}" for r in results["scenarios"]
            if r.get("busy_before") is not None]
    if busy:
        lines.append("Machine busy (other processes) just before each scenario: " + ", ".join(busy))
    steal = [f"{r['scenario']} {r['cpu_steal_share']:.0%}" for r in results["scenarios"]
             if r.get("cpu_steal_share") is not None]
    if steal:
        lines.append("CPU steal (hypervisor) during each scenario: " + ", ".join(steal))
    lines.append("")
    goals = targets(results)
    if goals:
        lines += ["| target (mesh) | measured | met |", "|---|---|---|"]
        lines += [f"| {g['target']} | {g['measured']} | {_verdict(g['met'])} |" for g in goals]
        lines.append("")
    ratios = results.get("ratios", [])
    if ratios:
        lines += ["Throughput ratios, pair by pair (the scenarios of one kind alternate their "
                  "repetitions: A B C A B C ...):", "",
                  "| kind | ratio | median | range | each pair |", "|---|---|---|---|---|"]
        lines += [f"| {r['kind']} | {r['ratio']} | {r['median']:.2f} | {r['min']:.2f}–"
                  f"{r['max']:.2f} | {', '.join(f'{v:.2f}' for v in r['pairs'])} |"
                  for r in ratios]
        lines.append("")
    if any(r.get("kind", "http1") == "http1" for r in by.values()):
        lines += ["HTTP/1.1 keep-alive, 1 KB responses:", ""]
        lines += _http1_table(by, results.get("latency_added", []), results)
        lines += _latency_table(results)
    lines += _other_tables(by)
    reuse = by.get("mesh", {}).get("throughput", {}).get("server_tls_handshakes")
    if reuse:
        flat = reuse["before"] == reuse["after"]
        lines += ["", f"Proxy-to-proxy connection reuse: the server proxy's TLS handshakes went "
                  f"{reuse['before']} → {reuse['after']} over the max-throughput runs"
                  f"{' (flat: pooled connections reused)' if flat else ' (NOT flat: reconnecting)'}."]
    lines += _telemetry_cost(by)
    if results.get("wall_time"):
        lines += ["", phases.summary(results["wall_time"]) + "."]
    for r in results["scenarios"]:
        if "error" in r:
            lines.append(f"\n{r['scenario']}: failed: {r['error'][:300]}")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> Path | None:
    """Latency percentiles and throughput side by side, one bar group per scenario."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in results["scenarios"] if "error" not in r and "latency" in r]  # HTTP/1.1
    if not rows:
        return None
    names = [r["scenario"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.25
    for i, pct in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        vals = [_timing(r["latency"])[pct] for r in rows]
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
    results = {**results, "targets": targets(results)}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(markdown(results))
    png = chart(results, out_dir / f"{stem}.png")
    if png:
        paths["png"] = png
    return paths
