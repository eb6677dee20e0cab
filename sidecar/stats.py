"""Counters updated on the hot path as plain ints and dicts, rendered on scrape.

No per-request objects: a request adds 1 to a dict slot keyed by a tuple of label values and
1 to one bucket of a fixed histogram array. Rendering to Prometheus text happens only when
:15090/metrics is scraped.

Two families. Istio's standard metrics (``istio_*``, the names, labels and default buckets of
Istio's "Istio Standard Metrics" reference) are keyed by a *label key*: the connection- and
endpoint-level labels already rendered as Prometheus label text by ``sidecar/labels.py``, once
per connection or endpoint, never per request. Only the per-request labels (response code,
gRPC status, response flags) are added to the key on the hot path. Remora's own operational
series stay ``remora_*``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

# Seconds; fixed so that a request only increments one slot of a list.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INBOUND = "inbound"
OUTBOUND = "outbound"

# Istio's default buckets: milliseconds for durations, bytes (powers of ten) for sizes.
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                       60000, 300000, 600000, 1800000, 3600000)
BYTES_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)
# Layout of one HTTP series' list: count, three sums, then three non-cumulative bucket arrays
# (each with a final +Inf slot).
_COUNT, _DUR_SUM, _REQ_SUM, _RESP_SUM = 0, 1, 2, 3
_DUR0 = 4
_REQ0 = _DUR0 + len(DURATION_BUCKETS_MS) + 1
_RESP0 = _REQ0 + len(BYTES_BUCKETS) + 1
_SERIES_LEN = _RESP0 + len(BYTES_BUCKETS) + 1
# Layout of one TCP series' list (see tcp_open): opened, closed, sent, received.
TCP_OPENED, TCP_CLOSED, TCP_SENT, TCP_RECEIVED = 0, 1, 2, 3
NO_FLAGS = "-"  # Envoy's response_flags when there are none


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
        # VirtualService mirror copies by outcome (sidecar/http/mirror.py).
        self.mirror: dict[str, int] = {}
        self.http2_codec = ""  # which HTTP/2 codec the process chose (sidecar/http/h2select.py)
        # Istio's metrics: (label key, code, grpc status, flags) -> series list; label key -> TCP.
        self.http: dict[tuple[str, int, str, str], list[Any]] = {}
        self.tcp: dict[str, list[int]] = {}  # closed connections' totals, and opens/closes
        self.tcp_live: dict[str, dict[int, list[int]]] = {}  # open connections' own counts

    def exchange_done(self, key: str, code: int, grpc_status: str, flags: str,
                      request_bytes: int, response_bytes: int, duration_s: float) -> None:
        """One finished HTTP exchange (``key`` from sidecar/labels.py; bytes are body bytes)."""
        skey = (key, code, grpc_status, flags)
        try:  # a hit costs no call (a series is made once)
            s = self.http[skey]
        except KeyError:
            s = self.http[skey] = [0, 0.0, 0, 0] + [0] * (_SERIES_LEN - 4)
        ms = duration_s * 1000.0
        s[_COUNT] += 1
        s[_DUR_SUM] += ms
        s[_REQ_SUM] += request_bytes
        s[_RESP_SUM] += response_bytes
        s[_DUR0 + bisect_left(DURATION_BUCKETS_MS, ms)] += 1
        s[_REQ0 + (bisect_left(BYTES_BUCKETS, request_bytes) if request_bytes else 0)] += 1  # GET
        s[_RESP0 + bisect_left(BYTES_BUCKETS, response_bytes)] += 1

    def tcp_open(self, key: str) -> list[int]:
        """Count an opaque TCP connection opened. The returned list is that connection's own:
        the relay adds bytes to [TCP_SENT] (towards the downstream) and [TCP_RECEIVED] (from
        it); a scrape adds open connections' bytes in, so the counters move while they last;
        ``tcp_close`` folds them into the series."""
        s = self.tcp.get(key)
        if s is None:
            s = self.tcp[key] = [0, 0, 0, 0]
        s[TCP_OPENED] += 1
        conn = [0, 0, 0, 0]
        self.tcp_live.setdefault(key, {})[id(conn)] = conn
        return conn

    def tcp_close(self, key: str, conn: list[int]) -> None:
        live = self.tcp_live.get(key)
        if live is None or live.pop(id(conn), None) is None:
            return  # closed already: count once
        if not live:
            del self.tcp_live[key]
        s = self.tcp[key]
        s[TCP_CLOSED] += 1
        s[TCP_SENT] += conn[TCP_SENT]
        s[TCP_RECEIVED] += conn[TCP_RECEIVED]

    def request_done(
        self, direction: str, service: str, code: int, duration_s: float, peer_identity: str | None
    ) -> None:
        key = (direction, service, code, peer_identity or "")
        r = self.requests
        try:  # the hot path: a hit costs no call
            r[key] += 1
        except KeyError:
            r[key] = 1
        hkey = (direction, service)
        try:
            h = self.durations[hkey]
        except KeyError:
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

    def mirror_copy(self, result: str) -> None:
        self.mirror[result] = self.mirror.get(result, 0) + 1

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
            "mirror_requests": dict(self.mirror),
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
        _labelled(add, "remora_mirror_requests_total", "result", self.mirror)
        add("# TYPE remora_authz_decisions_total counter")
        for (p, a, r), n in sorted(self.authz.items()):
            add(f'remora_authz_decisions_total{{policy="{_esc(p)}",action="{a}",result="{r}"}} {n}')
        add("# TYPE remora_active_connections gauge")
        add(f"remora_active_connections {self.active_connections}")
        self._render_istio(add)
        return "\n".join(out) + "\n"

    def _render_istio(self, add: Callable[[str], None]) -> None:
        series = sorted(self.http.items())
        labels = [f'{k},response_code="{c}",grpc_response_status="{_esc(g)}",'
                  f'response_flags="{_esc(f)}"' for (k, c, g, f), _ in series]
        add("# TYPE istio_requests_total counter")
        for lab, (_, s) in zip(labels, series, strict=True):
            add(f"istio_requests_total{{{lab}}} {s[_COUNT]}")
        for name, first, bounds, total in (
            ("istio_request_duration_milliseconds", _DUR0, DURATION_BUCKETS_MS, _DUR_SUM),
            ("istio_request_bytes", _REQ0, BYTES_BUCKETS, _REQ_SUM),
            ("istio_response_bytes", _RESP0, BYTES_BUCKETS, _RESP_SUM),
        ):
            add(f"# TYPE {name} histogram")
            for lab, (_, s) in zip(labels, series, strict=True):
                cumulative = 0
                for i, le in enumerate(bounds):
                    cumulative += s[first + i]
                    add(f'{name}_bucket{{{lab},le="{le}"}} {cumulative}')
                add(f'{name}_bucket{{{lab},le="+Inf"}} {s[_COUNT]}')
                add(f"{name}_sum{{{lab}}} {s[total]}")
                add(f"{name}_count{{{lab}}} {s[_COUNT]}")
        tcp = []
        for key, closed in sorted(self.tcp.items()):
            s = list(closed)
            for conn in self.tcp_live.get(key, {}).values():
                s[TCP_SENT] += conn[TCP_SENT]
                s[TCP_RECEIVED] += conn[TCP_RECEIVED]
            tcp.append((key, s))
        # TCP series carry the same labels; Istio sets these three for connections.
        suffix = ',response_code="0",grpc_response_status="",response_flags="-"'
        for name, index in (("istio_tcp_connections_opened_total", TCP_OPENED),
                            ("istio_tcp_connections_closed_total", TCP_CLOSED),
                            ("istio_tcp_sent_bytes_total", TCP_SENT),
                            ("istio_tcp_received_bytes_total", TCP_RECEIVED)):
            add(f"# TYPE {name} counter")
            for key, s in tcp:
                add(f"{name}{{{key}{suffix}}} {s[index]}")


def _labelled(add: Callable[[str], None], name: str, label: str, values: dict[str, int]) -> None:
    add(f"# TYPE {name} counter")
    for k, n in sorted(values.items()):
        add(f'{name}{{{label}="{_esc(k)}"}} {n}')


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
