"""Routing outcomes through the pair: route timeout, no endpoint, passthrough."""

from __future__ import annotations

import sys

import pytest
from mesh_harness import APP_UID, APPS, PERMISSIVE, Mesh, Service

pytestmark = pytest.mark.root


def test_timeout_no_endpoint_and_passthrough(node, bin_dir):
    services = [Service("web", 8080, timeout=0.5), Service("nobody", 8081, endpoints=False)]
    mesh = Mesh.start(node, bin_dir, services, mtls_mode=PERMISSIVE)
    try:
        mesh.spawn_app([sys.executable, APPS, "http", "8080"])
        mesh.wait_port(mesh.server, 8080)

        def curl(url: str) -> str:
            r = mesh.client.exec(["curl", "-s", "--max-time", "10", "-w", " %{http_code}", url],
                                 uid=APP_UID, timeout=20)
            return r.stdout

        assert curl("http://web:8080/") == "hello from server\n 200"
        assert curl("http://web:8080/slow?s=3") == "upstream request timeout 504"
        assert curl("http://nobody:8081/") == "no healthy upstream 503"
        # Not a service in the config: relayed to the original destination as plaintext
        # (the server's inbound side takes plaintext under PERMISSIVE).
        assert curl(f"http://{mesh.server.ip}:8080/") == "hello from server\n 200"
        metrics = mesh.proxies["client"].metrics()
        assert 'remora_passthrough_connections_total{cluster="PassthroughCluster"} 1' in metrics
        for code in (200, 503, 504):
            assert f'response_code="{code}"' in metrics
    finally:
        mesh.close()
