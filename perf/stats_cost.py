"""Per-request cost of the proxy's counters (no root, a few seconds):

    .venv/bin/python perf/stats_cost.py

Times ``Stats.request_done`` (the remora_* series) and ``Stats.exchange_done`` (Istio's
metrics with the full label set, a precomputed label key) per call, as the relays make them,
and the label key lookup a relay does per connection or endpoint.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane.api.model import Cluster, Endpoint, ProxyConfig, WorkloadMeta  # noqa: E402
from sidecar.labels import Labeler  # noqa: E402
from sidecar.stats import Stats  # noqa: E402

N = 200_000


def main() -> None:
    meta = WorkloadMeta("reviews-v1", "demo", "reviews", "v1", "reviews")
    ep = Endpoint("198.18.0.21", 9080, "spiffe://cluster.local/ns/demo/sa/reviews", workload=meta)
    host = "reviews.demo.svc.cluster.local"
    lab = Labeler()
    lab.update(ProxyConfig(clusters=(Cluster(f"{host}|9080", host, 9080, "http", (ep,)),),
                           workload=WorkloadMeta("web", "demo", "web", "v1", "web")),
               "spiffe://cluster.local/ns/demo/sa/web")
    stats = Stats()
    key = lab.outbound(host, ep, "http")
    cases = {
        "request_done (remora_* series)": lambda: stats.request_done(
            "outbound", host, 200, 0.0042, ep.identity),
        "exchange_done (istio_* series, full label set)": lambda: stats.exchange_done(
            key, 200, "", "-", 120, 1024, 0.0042),
        "label key lookup (per connection/endpoint, cached)": lambda: lab.outbound(host, ep, "http"),
    }
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=N, repeat=3)) / N
        print(f"{name}: {best * 1e9:.0f} ns per call")
    render = min(timeit.repeat(stats.render_prometheus, number=50, repeat=3)) / 50
    print(f"render_prometheus with {len(stats.http)} Istio series: {render * 1e6:.0f} µs per scrape")


if __name__ == "__main__":
    main()
