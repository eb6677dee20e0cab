"""The discovery stream's keep-alive: an idle but healthy stream is never reconnected, a dead
one is, and every reconnect warning says why. Periods are shortened so this takes seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from cp_harness import FakeRuntime, settings

from sidecar.discovery import DiscoveryClient

PING = 0.2  # the control plane's ping period for these tests
IDLE = 3 * PING  # the proxy's idle timeout: silence this long means a dead stream


async def _idle_session(cp, keepalive: float, seconds: float, caplog) -> DiscoveryClient:
    cp.server.settings.keepalive = keepalive
    rt = FakeRuntime()
    s = dataclasses.replace(settings(cp, cp.token()), idle_timeout=IDLE)
    client = DiscoveryClient(rt, s)
    task = asyncio.create_task(client.run())
    try:
        await cp.wait(lambda: client.connected and rt.configs)
        with caplog.at_level(logging.WARNING, "remora.proxy.discovery"):
            await asyncio.sleep(seconds)  # no config change: nothing but pings on the stream
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return client


async def test_idle_mesh_held_for_many_ping_periods_never_reconnects(control_plane, caplog) -> None:
    client = await _idle_session(control_plane, PING, 15 * PING, caplog)
    assert client.sessions == 1
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]


async def test_a_silent_stream_is_reconnected_with_the_reason(control_plane, caplog) -> None:
    # Pings far apart: the stream goes silent for longer than the idle timeout.
    client = await _idle_session(control_plane, 60.0, 4 * IDLE, caplog)
    assert client.sessions >= 2
    warnings = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert warnings and all("nothing received for 0.6s" in w for w in warnings), warnings
