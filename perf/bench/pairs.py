"""Pair-by-pair comparisons of a family's alternating repetitions (A B C A B C ...), and the
order those repetitions run in. Pure functions: the runner feeds them what it measured."""

from __future__ import annotations

import statistics

PERCENTILES = ("p50_ms", "p90_ms", "p99_ms", "p999_ms")
TIMINGS = ("corrected", "service")  # from the scheduled send; from the actual write


def base(name: str) -> str:
    """The role of a scenario in its family: ``mesh-h2`` -> ``mesh``; ``mesh`` and
    ``mesh-telemetry`` stay themselves (only the kind suffix is dropped)."""
    stem, _, suffix = name.rpartition("-")
    return stem if suffix in ("h2", "grpc", "tcp") else name


def schedule(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, scenario) in the order they run: every scenario once per round, rounds in turn,
    so the n-th repetitions of two scenarios are a few seconds apart and can be paired."""
    return [(i, n) for i in range(rounds) for n in names]


def _spread(kind: str, ratio: str, pairs: list[float]) -> dict:
    return {"kind": kind, "ratio": ratio, "pairs": pairs, "median": statistics.median(pairs),
            "min": min(pairs), "max": max(pairs)}


def metric(kind: str, rep: dict) -> float:
    return rep["mb_per_s"] if kind == "tcp" else rep["rps"]


def pair_ratios(kind: str, runs: dict[str, list[dict]]) -> list[dict]:
    """mesh/haproxy, mesh/direct and haproxy/direct, each taken repetition by repetition."""
    by_base = {base(n): reps for n, reps in runs.items()}
    out = []
    for num, den in (("mesh", "haproxy"), ("mesh", "direct"), ("haproxy", "direct")):
        a, b = by_base.get(num), by_base.get(den)
        if not a or not b:
            continue
        pairs = [metric(kind, x) / metric(kind, y) for x, y in zip(a, b, strict=False)
                 if metric(kind, y) > 0]
        if pairs:
            out.append(_spread(kind, f"{num}/{den}", pairs))
    return out


def latency_added(rounds: dict[str, list[dict]]) -> list[dict]:
    """Latency added over ``direct`` by each pair of proxies (mesh, haproxy), percentile by
    percentile, taken round by round (the n-th fixed-rate run of each, a few seconds apart):
    the median of those differences and their range. Nothing is dropped: every round counts."""
    direct = rounds.get("direct")
    out: list[dict] = []
    if not direct:
        return out
    for name in ("mesh", "haproxy"):
        mine = rounds.get(name)
        if not mine:
            continue
        for timing in TIMINGS:
            for pct in PERCENTILES:
                pairs = [m[timing][pct] - d[timing][pct] for m, d in zip(mine, direct, strict=False)
                         if pct in m.get(timing, {}) and pct in d.get(timing, {})]
                if pairs:
                    out.append({**_spread("http1", f"{name}-direct", pairs), "timing": timing,
                                "percentile": pct})
    return out


def find_added(added: list[dict], name: str, pct: str, timing: str = "corrected") -> dict | None:
    for a in added:
        if a["ratio"] == f"{name}-direct" and a["percentile"] == pct and a["timing"] == timing:
            return a
    return None


def merge_rounds(rounds: list[dict]) -> dict:
    """One scenario's fixed-rate rounds as one record: each percentile the median over rounds
    (the rounds stay in ``rounds``), counts summed, RSS the peak, vCPU the median."""
    merged: dict = {"rate": rounds[0]["rate"], "duration_s": sum(r["duration_s"] for r in rounds),
                    "connections": rounds[0]["connections"],
                    "requests": sum(r["requests"] for r in rounds),
                    "errors": sum(r["errors"] for r in rounds), "status_codes": {},
                    "rounds": rounds}
    for r in rounds:
        for code, n in r["status_codes"].items():
            merged["status_codes"][code] = merged["status_codes"].get(code, 0) + n
    for timing in TIMINGS:
        keys = rounds[0].get(timing, {}).keys()
        merged[timing] = {k: statistics.median(r[timing][k] for r in rounds) for k in keys}
    for key, agg in (("vcpu_per_1k_rps", statistics.median), ("rss_load_mb", max)):
        procs = rounds[0].get(key, {})
        merged[key] = {k: agg(r[key][k] for r in rounds) for k in procs}
    if "cores" in rounds[0]:
        merged["cores"] = rounds[0]["cores"]
    return merged
