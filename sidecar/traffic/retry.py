"""Retry decisions (VirtualService ``retries``) with Envoy's retryOn conditions and back-off.

A route without ``retries`` gets Istio's default policy (``RetryPolicy()``: 2 attempts on
connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes 503). Outcomes
with no response at all (connect failure, reset, per-try timeout) count as 5xx and as gateway
errors, as Envoy counts them (they become a 503/504 locally). gRPC conditions look at
``grpc-status`` in the response headers (a trailers-only response), as Envoy does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.api.model import HttpRoute, RetryPolicy

DEFAULT = RetryPolicy()
BASE_INTERVAL = 0.025  # Envoy's default base back-off
MAX_INTERVAL = 10 * BASE_INTERVAL  # Envoy's default cap
GRPC_CONDITIONS = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13,
                   "unavailable": 14}
GATEWAY_STATUSES = (502, 503, 504)
RETRIABLE_4XX = (409,)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt ended with; ``status`` None when no response headers came."""

    status: int | None = None
    grpc_status: int | None = None  # from response headers only
    connect_failure: bool = False
    reset: bool = False
    refused_stream: bool = False
    timed_out: bool = False  # the per-try timeout fired

    @property
    def no_response(self) -> bool:
        return self.status is None


def policy(route: HttpRoute | None) -> RetryPolicy:
    return route.retries if route is not None and route.retries is not None else DEFAULT


def retriable(p: RetryPolicy, outcome: Outcome) -> bool:
    """True when ``outcome`` matches one of the policy's retryOn conditions."""
    on = p.retry_on
    status = outcome.status
    if outcome.refused_stream and ("refused-stream" in on or "5xx" in on):
        return True
    if outcome.connect_failure and ("connect-failure" in on or "5xx" in on or "gateway-error" in on
                                    or "reset" in on):
        return True
    if outcome.no_response and (outcome.reset or outcome.timed_out) and (
            "reset" in on or "5xx" in on or "gateway-error" in on):
        return True
    if status is not None:
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in GATEWAY_STATUSES:
            return True
        if "retriable-4xx" in on and status in RETRIABLE_4XX:
            return True
        if "retriable-status-codes" in on and status in p.status_codes:
            return True
    if outcome.grpc_status is not None:
        return any(GRPC_CONDITIONS.get(c) == outcome.grpc_status for c in on)
    return False


def should_retry(p: RetryPolicy, retries_done: int, outcome: Outcome) -> bool:
    """Retry once more? ``retries_done`` counts retries already made (not the first try)."""
    return retries_done < p.attempts and retriable(p, outcome)


def backoff(retry_number: int, rand: Callable[[], float] = random.random) -> float:
    """Envoy's fully jittered exponential back-off before retry ``retry_number`` (1-based)."""
    ceiling = min(MAX_INTERVAL, (2 ** retry_number - 1) * BASE_INTERVAL)
    return float(rand() * ceiling)
