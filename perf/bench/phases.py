"""Where a benchmark run's wall time goes: each phase (setup, warm-up, measured runs, profile,
latency, teardown, waiting for a quiet machine) timed per family, so the 6-minute budget of
`make bench` can be checked and defended from the run's own record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# The order phases are printed in (a phase not listed here comes after them).
ORDER = ("quiet wait", "setup", "warm-up", "measured", "profile", "latency", "teardown")


class Clock:
    """Accumulates wall seconds per (family, phase)."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}
        self._t0 = time.monotonic()

    @contextmanager
    def phase(self, family: str, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(family, name, time.monotonic() - t0)

    def add(self, family: str, name: str, seconds: float) -> None:
        fam = self.seconds.setdefault(family, {})
        fam[name] = fam.get(name, 0.0) + seconds

    def record(self) -> dict:
        """The JSON shape: total wall time and seconds per family and phase."""
        return {"total_s": time.monotonic() - self._t0,
                "by_family": {f: dict(p) for f, p in self.seconds.items()}}


def summary(record: dict) -> str:
    """One line: total, then each phase summed over families, then each family's total."""
    totals: dict[str, float] = {}
    for phases in record["by_family"].values():
        for name, s in phases.items():
            totals[name] = totals.get(name, 0.0) + s
    ordered = sorted(totals, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    fams = ", ".join(f"{f} {sum(p.values()):.0f}" for f, p in record["by_family"].items())
    return (f"Wall time {record['total_s']:.0f} s; by phase: "
            + ", ".join(f"{n} {totals[n]:.0f}" for n in ordered)
            + f"; by family: {fams} (seconds)")
