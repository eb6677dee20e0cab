"""Telemetry of one opaque TCP connection: Istio's TCP metrics and its access log line."""

from __future__ import annotations

import time

from .accesslog import AccessLog
from .stats import TCP_RECEIVED, TCP_SENT, Stats


class TcpTelemetry:
    """Opened on creation; ``counts`` goes to the relay (bytes); ``close`` once at the end."""

    __slots__ = ("stats", "key", "counts", "start", "log", "upstream_host", "cluster",
                 "downstream_peer", "upstream_peer", "closed")

    def __init__(self, stats: Stats, key: str, log: AccessLog | None, upstream_host: str,
                 cluster: str, downstream_peer: str | None, upstream_peer: str | None) -> None:
        self.stats, self.key, self.log = stats, key, log
        self.counts = stats.tcp_open(key)
        self.start = time.time()
        self.upstream_host, self.cluster = upstream_host, cluster
        self.downstream_peer, self.upstream_peer = downstream_peer, upstream_peer
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stats.tcp_close(self.key, self.counts)
        if self.log is not None:
            c = self.counts
            self.log.tcp(self.start, c[TCP_RECEIVED], c[TCP_SENT], time.time() - self.start,
                         self.upstream_host, self.cluster, self.downstream_peer, self.upstream_peer)
