"""IPv6 through the pair: SO_ORIGINAL_DST for IPv6 on both sides, the inbound hop from ::6."""

from __future__ import annotations

import json
import sys

import pytest
from mesh_harness import APP_UID, APPS, CLIENT_ID, Mesh, Service

pytestmark = pytest.mark.root


def test_http_and_tcp_over_ipv6(node, bin_dir):
    mesh = Mesh.start(node, bin_dir, [Service("web6", 8080, ipv6=True),
                                      Service("upper6", 2600, "tcp", ipv6=True)])
    try:
        mesh.spawn_app([sys.executable, APPS, "http", "8080"])  # aiohttp on 0.0.0.0 and ::
        mesh.spawn_app([sys.executable, APPS, "upper", "2600"])
        mesh.wait_port(mesh.server, 8080)
        mesh.wait_port(mesh.server, 2600)
        r = mesh.client.exec(["curl", "-sS", "--max-time", "5", "http://web6:8080/headers"],
                             uid=APP_UID, timeout=15)
        assert r.returncode == 0, r.stderr + mesh.logs()
        headers = json.loads(r.stdout)
        assert headers["host"] == "web6:8080"
        assert f"URI={CLIENT_ID}" in headers["x-forwarded-client-cert"]
        assert headers["_remote"] == "::6"
        r = mesh.client.exec(["bash", "-c", "printf abc | socat -t5 - TCP6:upper6:2600,shut-down"],
                             uid=APP_UID, timeout=15)
        assert r.stdout == "ABC", r.stderr + mesh.logs()
    finally:
        mesh.close()
