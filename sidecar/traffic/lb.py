"""Load balancers (DestinationRule ``loadBalancer``) over one cluster's endpoints.

``make`` builds the balancer a cluster's effective policy names. ``choose(usable, key)`` takes
the outlier detector's per-endpoint verdicts (None: all usable) and, for consistent hashing,
the request's hash key (``hash_key``). LEAST_REQUEST needs the exchange to call
``started``/``finished`` around each request; it is Envoy's power of two choices.
PASSTHROUGH chooses nothing: the exchange connects to the original destination.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from http.cookies import CookieError, SimpleCookie

from control_plane.api.model import (
    LB_LEAST_REQUEST,
    LB_PASSTHROUGH,
    LB_RANDOM,
    ConsistentHash,
    Endpoint,
    LoadBalancer,
)

MAX_WEIGHT_SLOTS = 1000  # bound the expanded round-robin ring of a cluster
Usable = Sequence[bool] | None


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Balancer:
    """Weighted round robin (an expanded, interleaved ring); the base of the others."""

    def __init__(self, endpoints: tuple[Endpoint, ...], rand: random.Random | None = None) -> None:
        self.endpoints = endpoints
        self.rand = rand or random.Random()
        weights = [max(0, e.weight) for e in endpoints]
        total = sum(weights)
        scale = min(1.0, MAX_WEIGHT_SLOTS / total) if total else 0
        counts = [max(1, round(w * scale)) if w else 0 for w in weights]
        ring: list[int] = []
        while any(counts):  # one slot from each endpoint with slots left, round after round
            for i in range(len(endpoints)):
                if counts[i]:
                    ring.append(i)
                    counts[i] -= 1
        self.ring = ring
        self.cursor = self.rand.randrange(len(ring)) if ring else 0
        # Random picks: O(1) when every endpoint weighs the same, else bisect on cumulative weights.
        self.uniform = len({e.weight for e in endpoints}) <= 1 and all(e.weight > 0 for e in endpoints)
        self.cumulative = list(itertools.accumulate(weights))

    def choose(self, usable: Usable = None, key: int | None = None) -> Endpoint | None:
        ring = self.ring
        for _ in range(len(ring)):
            self.cursor = (self.cursor + 1) % len(ring)
            i = ring[self.cursor]
            if usable is None or usable[i]:
                return self.endpoints[i]
        return None

    def started(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` began (only LEAST_REQUEST keeps count)."""

    def finished(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` ended."""

    def _weighted_index(self, usable: Usable) -> int | None:
        if usable is None:  # the hot path: no host ejected
            if self.uniform:  # int(random() * n): several times cheaper than randrange(n)
                return int(self.rand.random() * len(self.endpoints)) if self.endpoints else None
            total = self.cumulative[-1] if self.cumulative else 0
            if total <= 0:
                return None
            return bisect.bisect_right(self.cumulative, self.rand.random() * total)
        idx = [i for i, e in enumerate(self.endpoints) if e.weight > 0 and (usable is None or usable[i])]
        if not idx:
            return None
        total = sum(self.endpoints[i].weight for i in idx)
        x = self.rand.random() * total
        for i in idx:
            x -= self.endpoints[i].weight
            if x < 0:
                return i
        return idx[-1]


class RandomBalancer(Balancer):
    def choose(self, usable: Usable = None, key: int | None = None) -> Endpoint | None:
        i = self._weighted_index(usable)
        return None if i is None else self.endpoints[i]


class LeastRequest(Balancer):
    """Power of two choices: draw two endpoints, take the one with fewer active requests."""

    def __init__(self, endpoints: tuple[Endpoint, ...], rand: random.Random | None = None) -> None:
        super().__init__(endpoints, rand)
        self.active = [0] * len(endpoints)
        self.total = 0
        self._index = {(e.address, e.port): i for i, e in enumerate(endpoints)}

    def choose(self, usable: Usable = None, key: int | None = None) -> Endpoint | None:
        a = self._weighted_index(usable)
        if a is None:
            return None
        if not self.total:  # nothing in flight: the second draw could not win
            return self.endpoints[a]
        b = self._weighted_index(usable)
        assert b is not None
        return self.endpoints[b if self.active[b] < self.active[a] else a]

    def started(self, endpoint: Endpoint) -> None:
        i = self._index.get((endpoint.address, endpoint.port))
        if i is not None:
            self.active[i] += 1
            self.total += 1

    def finished(self, endpoint: Endpoint) -> None:
        i = self._index.get((endpoint.address, endpoint.port))
        if i is not None and self.active[i] > 0:
            self.active[i] -= 1
            self.total -= 1


class Passthrough(Balancer):
    def choose(self, usable: Usable = None, key: int | None = None) -> Endpoint | None:
        return None


class RingHash(Balancer):
    """Envoy's ring hash: each endpoint owns points on a 64-bit ring in proportion to its weight."""

    def __init__(self, endpoints: tuple[Endpoint, ...], ring_size: int, rand: random.Random | None = None) -> None:
        super().__init__(endpoints, rand)
        total = sum(max(0, e.weight) for e in endpoints) or 1
        points: list[tuple[int, int]] = []
        for i, e in enumerate(endpoints):
            n = max(1, round(ring_size * max(0, e.weight) / total)) if e.weight > 0 else 0
            points.extend((hash64(f"{e.address}:{e.port}_{k}"), i) for k in range(n))
        points.sort()
        self.hashes = [h for h, _ in points]
        self.owners = [i for _, i in points]

    def choose(self, usable: Usable = None, key: int | None = None) -> Endpoint | None:
        if key is None:  # no key in this request: Envoy picks at random
            i = self._weighted_index(usable)
            return None if i is None else self.endpoints[i]
        n = len(self.hashes)
        start = bisect.bisect_left(self.hashes, key)
        for step in range(n):
            i = self.owners[(start + step) % n]
            if usable is None or usable[i]:
                return self.endpoints[i]
        return None


def make(policy: LoadBalancer, endpoints: tuple[Endpoint, ...], rand: random.Random | None = None) -> Balancer:
    if policy.consistent_hash is not None:
        return RingHash(endpoints, policy.consistent_hash.minimum_ring_size, rand)
    if policy.simple == LB_LEAST_REQUEST:
        return LeastRequest(endpoints, rand)
    if policy.simple == LB_RANDOM:
        return RandomBalancer(endpoints, rand)
    if policy.simple == LB_PASSTHROUGH:
        return Passthrough(endpoints, rand)
    return Balancer(endpoints, rand)


def cookie_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() != "cookie":
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(v)
        except CookieError:
            continue
        if name in jar:
            return jar[name].value
    return None


def hash_key(
    ch: ConsistentHash, headers: Sequence[tuple[str, str]], query: Callable[[str], str | None], source_ip: str,
    new_cookie: Callable[[], str],
) -> tuple[int | None, str | None]:
    """(hash key or None, Set-Cookie value to add to the response or None) for one request.

    ``query(name)`` gives a query parameter's first value; ``new_cookie()`` makes a value when
    a cookie with a ttl is absent (Envoy then generates it and the response sets it).
    """
    if ch.header is not None:
        values = [v for k, v in headers if k.lower() == ch.header]
        return (hash64(",".join(values)) if values else None), None
    if ch.query_param is not None:
        value = query(ch.query_param)
        return (hash64(value) if value is not None else None), None
    if ch.use_source_ip:
        return (hash64(source_ip) if source_ip else None), None
    assert ch.cookie is not None
    value = cookie_value(headers, ch.cookie)
    if value is not None:
        return hash64(value), None
    if not ch.cookie_ttl:
        return None, None
    value = new_cookie()
    attrs = [f'{ch.cookie}="{value}"', f"Max-Age={int(ch.cookie_ttl)}"]
    if ch.cookie_path:
        attrs.append(f"Path={ch.cookie_path}")
    attrs.append("HttpOnly")
    return hash64(value), "; ".join(attrs)
