"""Envoy's response flags, the one place they are named (access logs, stats, local replies)."""

from __future__ import annotations

NR = "NR"  # no route matched (404), or no cluster for the route
UO = "UO"  # upstream overflow: a connection-pool limit (circuit breaker) was hit (503)
UF = "UF"  # upstream connection failure (503)
URX = "URX"  # the retry limit was reached and the last attempt failed
UT = "UT"  # upstream request timeout (504)
DI = "DI"  # the request was delayed by fault injection
FI = "FI"  # the request was aborted by fault injection
UH = "UH"  # no healthy upstream host (503)
UC = "UC"  # upstream connection terminated or reset (502/503 before the response head)
DC = "DC"  # downstream connection terminated (the client went away mid-exchange)

DESCRIPTIONS = {
    NR: "no route", UO: "upstream overflow", UF: "upstream connection failure",
    URX: "upstream retry limit exceeded", UT: "upstream request timeout", DI: "delay injected",
    FI: "fault injected", UH: "no healthy upstream",
}


def join(flags: list[str] | tuple[str, ...]) -> str:
    """Envoy's access-log form: comma-separated, "-" when none."""
    return ",".join(flags) if flags else "-"
