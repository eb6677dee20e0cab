"""Debouncer: a burst becomes one action after the quiet time; a trickle is capped by max."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.debounce import Debouncer


async def test_burst_coalesces_after_quiet_time() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    d = Debouncer(lambda: calls.append(loop.time()), quiet=0.1, max_delay=5)
    task = asyncio.create_task(d.run())
    last = 0.0
    for _ in range(5):
        d.trigger()
        last = loop.time()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    task.cancel()
    assert len(calls) == 1
    # After the last trigger plus the quiet time (less the event loop's 1 ms timer granularity).
    assert calls[0] - last >= 0.1 - 0.002


async def test_constant_trickle_is_capped_by_max_delay() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    d = Debouncer(lambda: calls.append(loop.time()), quiet=0.1, max_delay=0.3)
    task = asyncio.create_task(d.run())
    start = loop.time()
    while loop.time() - start < 1.0:  # a change every 50 ms: never quiet for 100 ms
        d.trigger()
        await asyncio.sleep(0.05)
    task.cancel()
    assert len(calls) >= 2, "max_delay must force actions during a constant trickle"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quiet"):
        Debouncer(lambda: None, quiet=1, max_delay=0.5)
