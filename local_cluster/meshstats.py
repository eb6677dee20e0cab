"""The proxies' own numbers, per edge: read from each pod's :15090/metrics (Prometheus text).

``remora_requests_total{direction,service,response_code,peer_identity}`` and the
``remora_request_duration_seconds`` histogram per (direction, service). Two scrapes are
subtracted so that only the measured window counts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted labels)


def parse(text: str) -> dict[Sample, float]:
    """Prometheus text exposition -> {(name, labels): value}; comments are skipped."""
    out: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = tuple(sorted((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                              for k, v in _LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def delta(after: Mapping[Sample, float], before: Mapping[Sample, float]) -> dict[Sample, float]:
    """Counter increase between two scrapes (a restarted proxy counts from zero)."""
    out = {}
    for k, v in after.items():
        d = v - before.get(k, 0.0)
        out[k] = v if d < 0 else d
    return out


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """histogram_quantile over (upper bound, cumulative count) pairs, as Prometheus does it."""
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


@dataclass
class Edge:
    """One (pod's workload, direction, service) as its proxy saw it over the window."""

    workload: str
    direction: str
    service: str
    requests: float = 0.0
    ok: float = 0.0
    codes: dict[str, float] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        return quantile(q, self.buckets.items())


def edges(per_pod: Mapping[str, tuple[str, Mapping[Sample, float]]]) -> list[Edge]:
    """{pod: (workload, samples)} -> edges summed over the pods of each workload."""
    found: dict[tuple[str, str, str], Edge] = {}
    buckets: dict[tuple[str, str, str], dict[float, float]] = defaultdict(dict)
    for _pod, (workload, samples) in sorted(per_pod.items()):
        for (name, labels), value in samples.items():
            lab = dict(labels)
            key = (workload, lab.get("direction", ""), lab.get("service", ""))
            if name == "remora_requests_total" and value > 0:
                e = found.setdefault(key, Edge(*key))
                e.requests += value
                code = lab.get("response_code", "")
                e.codes[code] = e.codes.get(code, 0.0) + value
                if code[:1] in ("2", "3"):
                    e.ok += value
                if lab.get("peer_identity"):
                    e.peers.add(lab["peer_identity"])
            elif name == "remora_request_duration_seconds_bucket":
                le = float(lab.get("le", "inf").replace("+Inf", "inf"))
                b = buckets[key]
                b[le] = b.get(le, 0.0) + value
    for key, e in found.items():
        e.buckets = buckets.get(key, {})
    return sorted(found.values(), key=lambda e: (e.direction != "outbound", e.workload, e.service))


def split(edges_: Iterable[Edge], workloads: Iterable[str]) -> dict[str, float]:
    """Share of inbound requests taken by each of ``workloads`` (e.g. reviews-v1, reviews-v2)."""
    names, edges_ = list(workloads), list(edges_)
    counts = {w: sum(e.requests for e in edges_ if e.direction == "inbound" and e.workload == w)
              for w in names}
    total = sum(counts.values())
    return {w: (c / total if total else 0.0) for w, c in counts.items()}
