"""Connection-pool limits (DestinationRule ``connectionPool``) as counters; overflow → 503 UO.

The exchange asks before it acts (``try_*``) and says when it is done (``release_*``); a False
answer means the limit is reached and the request is answered 503 with response flag UO, as
Envoy's circuit breakers do. Mapping as in Istio: tcp.maxConnections → connections,
http1MaxPendingRequests → requests waiting for a connection, http2MaxRequests → active
requests (any protocol), maxRetries → retries in flight, maxRequestsPerConnection → per
connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.api.model import ConnectionPool


@dataclass(slots=True)
class PoolLimits:
    limits: ConnectionPool
    connections: int = 0
    pending: int = 0
    requests: int = 0
    retries: int = 0
    overflows: dict[str, int] = field(default_factory=dict)  # which limit, how often (stats)

    def _take(self, attr: str, limit: int | None) -> bool:
        if limit is not None and getattr(self, attr) >= limit:
            self.overflows[attr] = self.overflows.get(attr, 0) + 1
            return False
        setattr(self, attr, getattr(self, attr) + 1)
        return True

    def _give(self, attr: str) -> None:
        setattr(self, attr, max(0, getattr(self, attr) - 1))

    def try_connection(self) -> bool:
        return self._take("connections", self.limits.max_connections)

    def release_connection(self) -> None:
        self._give("connections")

    def try_pending(self) -> bool:
        return self._take("pending", self.limits.http1_max_pending_requests)

    def release_pending(self) -> None:
        self._give("pending")

    def try_request(self) -> bool:
        return self._take("requests", self.limits.http2_max_requests)

    def release_request(self) -> None:
        self._give("requests")

    def try_retry(self) -> bool:
        return self._take("retries", self.limits.max_retries)

    def release_retry(self) -> None:
        self._give("retries")

    def connection_exhausted(self, requests_on_connection: int) -> bool:
        """True when a connection has carried its maxRequestsPerConnection and must close."""
        limit = self.limits.max_requests_per_connection
        return limit is not None and requests_on_connection >= limit
