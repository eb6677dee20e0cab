"""Wait for a quiet machine before each scenario: others' load skews every figure on 2 cores.

The load average lags by a minute (and counts our own previous scenario), so this samples
/proc/stat directly: the share of all cores busy over one second while none of ours runs.
"""

from __future__ import annotations

import time


def _busy_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, idle


def steal_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks so far: the hypervisor's share of our vCPUs, a noise source."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7], sum(fields)


def busy_share(seconds: float = 1.0) -> float:
    b0, i0 = _busy_idle()
    time.sleep(seconds)
    b1, i1 = _busy_idle()
    total = (b1 - b0) + (i1 - i0)
    return (b1 - b0) / total if total else 0.0


def wait_quiet(max_wait: float, threshold: float = 0.10) -> float:
    """Wait until under ``threshold`` of the machine is busy (at most ``max_wait`` s); returns
    the last busy share measured, so the record says how quiet the run really started."""
    deadline = time.monotonic() + max_wait
    share = busy_share()
    while share > threshold and time.monotonic() < deadline:
        share = busy_share()
    return share
