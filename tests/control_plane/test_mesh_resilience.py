"""The control plane dies while traffic flows: no request fails; it comes back: the proxies
reconnect on their own, resync, and proxy-status shows SYNCED."""

from __future__ import annotations

import json
import os
import time

import pytest
from cp_mesh import CpMesh, service

pytestmark = pytest.mark.root
VIP = "198.19.0.30"
LOAD_SECONDS = 14


def test_control_plane_outage_fails_no_request(node, bin_dir) -> None:
    mesh = CpMesh.start(node, bin_dir)
    try:
        mesh.apply("svc", service("echo", "beta", VIP, 8080, {"app": "echo"}))
        server = mesh.add_pod("server", "beta", "server", {"app": "echo"})
        mesh.serve(server, 8080, "server")
        client = mesh.add_pod("client", "alpha", "client", {"app": "client"}, hosts={"echo.beta": VIP})
        ids = ["server.beta", "client.alpha"]
        before = mesh.wait_synced(ids)
        out_dir = mesh.tmp / "out"
        out_dir.mkdir(mode=0o777)
        os.chmod(out_dir, 0o777)
        load = mesh.spawn_app(client, "load", "http://echo.beta:8080/", str(LOAD_SECONDS),
                              str(out_dir / "load.json"))
        time.sleep(2)
        mesh.kill_control_plane()
        time.sleep(4)  # proxies serve on their last good snapshot and certificate meanwhile
        assert mesh.proxy_status() == {}  # nobody answers on the monitoring port
        mesh.start_control_plane()
        after = mesh.wait_synced(ids, timeout=40)
        load.wait(LOAD_SECONDS + 20)
        result = json.loads((out_dir / "load.json").read_text())
        assert result["failed"] == 0 and result["ok"] > 100, (result, mesh.logs())
        # Same content, same version; same processes: nothing restarted.
        assert {p: after[p]["acked_version"] for p in ids} == {p: before[p]["acked_version"] for p in ids}
        assert all(h.proc.poll() is None for h in mesh.proxies.values())
    finally:
        mesh.close()
