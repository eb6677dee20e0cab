"""Counters updated on the hot path as plain ints and dicts, rendered on scrape.

No per-request objects: a request adds 1 to a dict slot keyed by a tuple of label values and
1 to one bucket of a fixed histogram array. Rendering to Prometheus text happens only when
:15090/metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

# Seconds; fixed so that a request only increments one slot of a list.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INBOUND = "inbound"
OUTBOUND = "outbound"


class Stats:
    """All proxy counters. Methods are tiny so the hot path stays a few dict operations."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int, str], int] = {}
        # One histogram per (direction, service): bucket counts, sum, count.
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.tcp_opened: dict[str, int] = {INBOUND: 0, OUTBOUND: 0}
        self.tcp_closed: dict[str, int] = {INBOUND: 0, OUTBOUND: 0}
        self.tls_handshakes: dict[str, int] = {"client": 0, "server": 0}
        self.connect_errors: dict[str, int] = {}
        self.protocol_errors = 0
        self.pool_reused = 0
        self.passthrough = 0  # outbound connections to destinations not in the config
        self.inbound_refused = 0  # non-mTLS connections refused under STRICT
        self.active_connections = 0
        # AuthorizationPolicy decisions: (policy, action, result) → count.
        self.authz: dict[tuple[str, str, str], int] = {}
        # Accept back-offs at the open-files limit, by listener.
        self.accept_exhausted: dict[str, int] = {}
        self.http2_codec = ""  # which HTTP/2 codec the process chose (sidecar/http/h2select.py)

    def request_done(
        self, direction: str, service: str, code: int, duration_s: float, peer_identity: str | None
    ) -> None:
        key = (direction, service, code, peer_identity or "")
        r = self.requests
        r[key] = r.get(key, 0) + 1
        hkey = (direction, service)
        h = self.durations.get(hkey)
        if h is None:
            h = self.durations[hkey] = [0] * (len(BUCKETS) + 1) + [0.0, 0]
        h[bisect_left(BUCKETS, duration_s)] += 1
        h[-2] += duration_s
        h[-1] += 1

    def conn_opened(self, direction: str) -> None:
        self.tcp_opened[direction] += 1
        self.active_connections += 1

    def conn_closed(self, direction: str) -> None:
        self.tcp_closed[direction] += 1
        self.active_connections -= 1

    def handshake(self, side: str) -> None:
        self.tls_handshakes[side] += 1

    def connect_error(self, reason: str) -> None:
        self.connect_errors[reason] = self.connect_errors.get(reason, 0) + 1

    def protocol_error(self) -> None:
        self.protocol_errors += 1

    def fd_exhausted(self, listener: str) -> None:
        self.accept_exhausted[listener] = self.accept_exhausted.get(listener, 0) + 1

    def authz_decision(self, policy: str, action: str, result: str) -> None:
        key = (policy, action, result)
        self.authz[key] = self.authz.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """For the admin /stats endpoint (JSON)."""
        return {
            "requests": [
                {"direction": d, "service": s, "response_code": c, "peer_identity": p, "count": n}
                for (d, s, c, p), n in sorted(self.requests.items())
            ],
            "tcp_connections_opened": dict(self.tcp_opened),
            "tcp_connections_closed": dict(self.tcp_closed),
            "active_connections": self.active_connections,
            "tls_handshakes": dict(self.tls_handshakes),
            "upstream_connect_errors": dict(self.connect_errors),
            "downstream_protocol_errors": self.protocol_errors,
            "upstream_pool_reused": self.pool_reused,
            "passthrough_connections": self.passthrough,
            "inbound_refused": self.inbound_refused,
            "accept_fd_exhausted": dict(self.accept_exhausted),
            "authz_decisions": [
                {"policy": p, "action": a, "result": r, "count": n}
                for (p, a, r), n in sorted(self.authz.items())
            ],
        }

    def render_prometheus(self) -> str:
        out: list[str] = []
        add = out.append
        add("# TYPE remora_requests_total counter")
        for (d, s, c, p), n in sorted(self.requests.items()):
            add(
                f'remora_requests_total{{direction="{d}",service="{_esc(s)}",'
                f'response_code="{c}",peer_identity="{_esc(p)}"}} {n}'
            )
        add("# TYPE remora_request_duration_seconds histogram")
        for (d, s), h in sorted(self.durations.items()):
            labels = f'direction="{d}",service="{_esc(s)}"'
            cumulative: float = 0
            for i, le in enumerate(BUCKETS):
                cumulative += h[i]
                add(f'remora_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}')
            cumulative += h[len(BUCKETS)]
            add(f'remora_request_duration_seconds_bucket{{{labels},le="+Inf"}} {cumulative}')
            add(f"remora_request_duration_seconds_sum{{{labels}}} {h[-2]}")
            add(f"remora_request_duration_seconds_count{{{labels}}} {h[-1]}")
        _labelled(add, "remora_tcp_connections_opened_total", "direction", self.tcp_opened)
        _labelled(add, "remora_tcp_connections_closed_total", "direction", self.tcp_closed)
        _labelled(add, "remora_tls_handshakes_total", "side", self.tls_handshakes)
        _labelled(add, "remora_upstream_connect_errors_total", "reason", self.connect_errors)
        add("# TYPE remora_downstream_protocol_errors_total counter")
        add(f"remora_downstream_protocol_errors_total {self.protocol_errors}")
        add("# TYPE remora_upstream_pool_reused_total counter")
        add(f"remora_upstream_pool_reused_total {self.pool_reused}")
        if self.http2_codec:
            add("# HELP remora_http2_codec_info The HTTP/2 codec this proxy uses (nghttp2: native).")
            add("# TYPE remora_http2_codec_info gauge")
            add(f'remora_http2_codec_info{{codec="{self.http2_codec}"}} 1')
        add("# TYPE remora_passthrough_connections_total counter")
        add(f'remora_passthrough_connections_total{{cluster="PassthroughCluster"}} {self.passthrough}')
        add("# TYPE remora_inbound_refused_total counter")
        add(f"remora_inbound_refused_total {self.inbound_refused}")
        _labelled(add, "remora_accept_fd_exhausted_total", "listener", self.accept_exhausted)
        add("# TYPE remora_authz_decisions_total counter")
        for (p, a, r), n in sorted(self.authz.items()):
            add(f'remora_authz_decisions_total{{policy="{_esc(p)}",action="{a}",result="{r}"}} {n}')
        add("# TYPE remora_active_connections gauge")
        add(f"remora_active_connections {self.active_connections}")
        return "\n".join(out) + "\n"


def _labelled(add: Callable[[str], None], name: str, label: str, values: dict[str, int]) -> None:
    add(f"# TYPE {name} counter")
    for k, n in sorted(values.items()):
        add(f'{name}{{{label}="{_esc(k)}"}} {n}')


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
