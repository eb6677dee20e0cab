"""Mirroring (VirtualService ``mirror`` + ``mirrorPercentage``): whether to copy a request and the
authority the copy carries. As Envoy does, the copy's Host/:authority gets "-shadow" appended to
the host part, so the mirror's app can tell shadow traffic apart; its answer is discarded.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from control_plane.api.model import HttpRoute


def should_mirror(route: HttpRoute | None, rand: Callable[[], float] = random.random) -> bool:
    if route is None or route.mirror is None:
        return False
    return route.mirror_percent >= 100.0 or rand() * 100.0 < route.mirror_percent


def shadow_authority(authority: str) -> str:
    """"reviews:9080" → "reviews-shadow:9080"; an IPv6 literal keeps its brackets intact."""
    if authority.startswith("["):
        host, sep, port = authority.partition("]")
        return f"{host}]-shadow{port}" if sep else f"{authority}-shadow"
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"
