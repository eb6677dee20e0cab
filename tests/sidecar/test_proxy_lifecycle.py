"""Proxy lifecycle: SIGTERM drains, /quitquitquit exits, `remora-proxy wait`, admin endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mesh_harness import APP_UID, Mesh

from control_plane.api import ports

pytestmark = pytest.mark.root


@pytest.fixture
def mesh(node, bin_dir):
    m = Mesh.start_web(node, bin_dir, drain_seconds=10)
    try:
        yield m
    finally:
        m.close()


def test_sigterm_lets_a_long_request_finish_then_exits_0(mesh):
    slow = subprocess.Popen(
        mesh.client.command(["curl", "-sS", "--max-time", "20", "http://web:8080/slow?s=2"],
                            uid=APP_UID), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.7)  # the request is in flight through both proxies
    started = time.monotonic()
    for name in ("client", "server"):
        os.kill(mesh.proxies[name].proc.pid, signal.SIGTERM)
    out, err = slow.communicate(timeout=20)
    assert out == "slow done\n", err + mesh.logs()
    for name in ("client", "server"):
        assert mesh.proxies[name].proc.wait(10) == 0, mesh.logs()
    # It exited once the request was done, well before the 10 s drain deadline.
    assert time.monotonic() - started < 8


def test_quitquitquit_ends_the_proxy(mesh):
    h = mesh.proxies["client"]
    assert h.http(f"http://127.0.0.1:{ports.AGENT_PORT}/quitquitquit", "POST") == "exiting\n"
    assert h.proc.wait(5) == 0


def test_wait_and_admin_endpoints(mesh, bin_dir):
    h = mesh.proxies["server"]
    dump = json.loads(h.admin("/config_dump"))
    assert dump["certificate"]["identity"].endswith("/sa/server")
    assert dump["config"]["inbound"]["mtls_mode"] == "STRICT"
    assert "level debug" in h.admin("/logging?level=debug", "POST")
    stats = json.loads(h.admin("/stats"))
    assert stats["active_connections"] >= 0 and stats["rss_bytes"] > 0
    # The running proxy never loaded the heavy native libraries (checked in its memory map).
    maps = Path(f"/proc/{h.proc.pid}/maps").read_text()
    assert "httptools" in maps
    assert not [lib for lib in ("cryptography", "aiohttp", "_yaml") if lib in maps]
    assert "remora_tcp_connections_opened_total" in h.metrics()
    # An unknown app-health probe is answered by the probe runner (not a crash of the proxy).
    probe = h.http(f"http://127.0.0.1:{ports.AGENT_PORT}/app-health/web/readyz")
    assert probe and "internal error" not in probe
    # `wait` succeeds against a ready proxy; after /drain it times out with a message.
    assert mesh.server.exec([str(bin_dir / "remora-proxy"), "wait", "--timeout", "2"]).returncode == 0
    assert "draining" in h.admin("/drain", "POST")
    r = mesh.server.exec([str(bin_dir / "remora-proxy"), "wait", "--timeout", "0.5"])
    assert r.returncode == 1 and "not ready" in r.stderr
