"""The mesh as the proxies count it: service-graph edges and per-workload golden metrics,
computed from two scrapes of every proxy's Istio metrics (``:15090/stats/prometheus``).

Pure functions of parsed samples (``local_cluster.meshstats.parse``), shared by
``remoractl stat`` and ``remoractl dashboard``. Rates are the counters' increase over the
window between the two scrapes; quantiles come from the duration histograms' increase
(``histogram_quantile`` as Prometheus computes it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from local_cluster.meshstats import Sample, delta, quantile

PodSamples = Mapping[str, Mapping[Sample, float]]  # pod name -> its proxy's samples
UNKNOWN = "unknown"


@dataclass
class _Acc:
    requests: float = 0.0
    errors: float = 0.0  # 5xx
    mtls: float = 0.0  # requests the server saw over mutual TLS
    server_seen: float = 0.0
    tcp_bytes: float = 0.0
    tcp_read: float = 0.0  # bytes from the clients (received by the server)
    tcp_write: float = 0.0
    tcp_open: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add_buckets(self, le: float, value: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + value


def _labels(sample: Sample) -> dict[str, str]:
    return dict(sample[1])


def _window_deltas(before: PodSamples, after: PodSamples) -> dict[Sample, float]:
    """Counter increases summed over pods (a pod new in ``after`` counts from zero)."""
    total: dict[Sample, float] = defaultdict(float)
    for pod, samples in after.items():
        for key, value in delta(samples, before.get(pod, {})).items():
            total[key] += value
    return total


def _name(workload: str, namespace: str) -> str:
    return UNKNOWN if workload == UNKNOWN else f"{workload}.{namespace}"


def view(before: PodSamples, after: PodSamples, seconds: float) -> dict[str, Any]:
    """{"window_s", "edges": [...], "workloads": [...]} over the window between the scrapes."""
    d = _window_deltas(before, after)
    gauge_open: dict[str, float] = defaultdict(float)  # open TCP connections per server
    for samples in after.values():
        for (metric, labels), value in samples.items():
            lab = dict(labels)
            if lab.get("reporter") != "destination":
                continue
            dst = _name(lab.get("destination_workload", UNKNOWN), lab.get("destination_workload_namespace", ""))
            if metric == "istio_tcp_connections_opened_total":
                gauge_open[dst] += value
            elif metric == "istio_tcp_connections_closed_total":
                gauge_open[dst] -= value
    edges: dict[tuple[str, str, str, str], _Acc] = defaultdict(_Acc)
    inbound: dict[str, _Acc] = defaultdict(_Acc)
    for key, value in d.items():
        metric, lab = key[0], _labels(key)
        reporter = lab.get("reporter")
        src = _name(lab.get("source_workload", UNKNOWN), lab.get("source_workload_namespace", ""))
        dst = _name(lab.get("destination_workload", UNKNOWN), lab.get("destination_workload_namespace", ""))
        proto = lab.get("request_protocol", "")
        ekey = (src, dst, lab.get("destination_service", UNKNOWN), "tcp" if proto == "tcp" else "http")
        # Edges: what the client's proxy counted; clients without a proxy only show at the server.
        counts_edge = reporter == "source" or (reporter == "destination" and src == UNKNOWN)
        if metric == "istio_requests_total":
            failed = lab.get("response_code", "").startswith("5")
            if counts_edge:
                e = edges[ekey]
                e.requests += value
                e.errors += value if failed else 0.0
            if reporter == "destination":
                e = edges[ekey]
                e.server_seen += value
                e.mtls += value if lab.get("connection_security_policy") == "mutual_tls" else 0.0
                w = inbound[dst]
                w.requests += value
                w.errors += value if failed else 0.0
        elif metric == "istio_request_duration_milliseconds_bucket":
            le = float(lab.get("le", "inf").replace("+Inf", "inf"))
            if counts_edge:
                edges[ekey].add_buckets(le, value)
            if reporter == "destination":
                inbound[dst].add_buckets(le, value)
        elif metric in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
            if counts_edge:
                edges[ekey].tcp_bytes += value
            if reporter == "destination":
                w = inbound[dst]
                if metric == "istio_tcp_received_bytes_total":
                    w.tcp_read += value
                else:
                    w.tcp_write += value
        elif metric == "istio_tcp_connections_opened_total" and reporter == "destination":
            edges[ekey].server_seen += value
            edges[ekey].mtls += value if lab.get("connection_security_policy") == "mutual_tls" else 0.0
    secs = max(seconds, 1e-9)

    def q(acc: _Acc, p: float) -> float | None:
        return quantile(p, acc.buckets.items())

    out_edges = []
    for (src, dst, svc, proto), e in sorted(edges.items()):
        if not e.requests and not e.tcp_bytes and not e.server_seen:
            continue
        out_edges.append({
            "source": src, "destination": dst, "service": svc, "protocol": proto,
            "rps": e.requests / secs,
            "success": (1 - e.errors / e.requests) if e.requests else None,
            "p50_ms": q(e, 0.5), "p99_ms": q(e, 0.99),
            "tcp_bytes_per_s": e.tcp_bytes / secs,
            "mtls": (e.mtls / e.server_seen) if e.server_seen else None,
        })
    workloads = []
    for name in sorted(set(inbound) | set(gauge_open)):
        if name == UNKNOWN:
            continue
        w = inbound.get(name, _Acc())
        workloads.append({
            "workload": name, "rps": w.requests / secs,
            "success": (1 - w.errors / w.requests) if w.requests else None,
            "p50_ms": q(w, 0.5), "p95_ms": q(w, 0.95), "p99_ms": q(w, 0.99),
            "tcp_connections": max(0.0, gauge_open.get(name, 0.0)),
            "tcp_read_bytes_per_s": w.tcp_read / secs, "tcp_write_bytes_per_s": w.tcp_write / secs,
        })
    return {"window_s": seconds, "edges": out_edges, "workloads": workloads}
