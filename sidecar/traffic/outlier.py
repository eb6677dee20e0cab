"""Outlier detection (DestinationRule ``outlierDetection``) for one cluster; time is injected.

Envoy's rules: a host is ejected after ``consecutive_5xx`` 5xx answers in a row (local failures
such as connect errors count as 5xx and as gateway errors) or ``consecutive_gateway_errors``
502/503/504 in a row; it stays out for ``base_ejection_time`` × the number of times it has
been ejected, and that multiplier goes down by one every ``interval`` the host stays healthy.
At most ``max_ejection_percent`` of the hosts are out at once, but at least one may be; when
fewer than ``min_health_percent`` hosts are healthy, ejection is ignored and every host is used.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from control_plane.api.model import OutlierDetection

GATEWAY = (502, 503, 504)


@dataclass(slots=True)
class _Host:
    five: int = 0
    gateway: int = 0
    ejections: int = 0  # the back-off multiplier
    ejected_until: float | None = None
    last_decay: float = 0.0


class OutlierDetector:
    def __init__(self, policy: OutlierDetection) -> None:
        self.policy = policy
        self.hosts: dict[Hashable, _Host] = {}

    def _host(self, key: Hashable, now: float) -> _Host:
        h = self.hosts.get(key)
        if h is None:
            h = self.hosts[key] = _Host(last_decay=now)
        return h

    def report(self, key: Hashable, status: int | None, now: float, total_hosts: int) -> bool:
        """Record one result (``status`` None: no response: connect failure, reset, timeout).

        Returns True when this result ejected the host.
        """
        self.tick(now)
        h = self._host(key, now)
        failed5 = status is None or status >= 500
        failed_gw = status is None or status in GATEWAY
        h.five = h.five + 1 if failed5 else 0
        h.gateway = h.gateway + 1 if failed_gw else 0
        p = self.policy
        trip = (p.consecutive_5xx is not None and h.five >= p.consecutive_5xx) or (
            p.consecutive_gateway_errors is not None and h.gateway >= p.consecutive_gateway_errors)
        if not trip or h.ejected_until is not None:
            return False
        h.five = h.gateway = 0
        if not self._room(total_hosts, now):
            return False
        h.ejections += 1
        h.ejected_until = now + p.base_ejection_time * h.ejections
        h.last_decay = now
        return True

    def _room(self, total: int, now: float) -> bool:
        ejected = sum(1 for h in self.hosts.values() if h.ejected_until is not None)
        return ejected == 0 or (ejected + 1) * 100 <= self.policy.max_ejection_percent * total

    def tick(self, now: float) -> None:
        """Return hosts whose ejection is over; decay the multiplier of healthy hosts."""
        for h in self.hosts.values():
            if h.ejected_until is not None and now >= h.ejected_until:
                h.ejected_until = None
                h.last_decay = now
            elif h.ejected_until is None and h.ejections and now - h.last_decay >= self.policy.interval:
                steps = int((now - h.last_decay) // self.policy.interval)
                h.ejections = max(0, h.ejections - steps)
                h.last_decay += steps * self.policy.interval

    def is_ejected(self, key: Hashable, now: float) -> bool:
        self.tick(now)
        h = self.hosts.get(key)
        return h is not None and h.ejected_until is not None

    def usable(self, keys: Sequence[Hashable], now: float) -> list[bool]:
        """Per host: may the balancer pick it (every host when too few are healthy)."""
        self.tick(now)
        ok = [not (k in self.hosts and self.hosts[k].ejected_until is not None) for k in keys]
        if keys and sum(ok) * 100 < self.policy.min_health_percent * len(keys):
            return [True] * len(keys)
        return ok
