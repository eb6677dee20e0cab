"""HTTP/1.1 through a pair of sidecars, with real iptables interception and mTLS."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mesh_harness import APP_UID, CLIENT_ID, Mesh, Service

pytestmark = pytest.mark.root
APPS = str(Path(__file__).with_name("apps.py"))


@pytest.fixture
def mesh(node, bin_dir):
    m = Mesh.start(node, bin_dir, [Service("web", 8080)])
    try:
        m.spawn_app([sys.executable, APPS, "http", "8080"])
        m.wait_port(m.server, 8080)
        yield m
    finally:
        m.close()


def curl(mesh: Mesh, *args: str, timeout: float = 30) -> str:
    r = mesh.client.exec(["curl", "-sS", "--max-time", "20", *args], uid=APP_UID, timeout=timeout)
    assert r.returncode == 0, r.stderr + mesh.logs()
    return r.stdout


def test_keepalive_requests_and_identity(mesh):
    out = curl(mesh, "-v", "http://web:8080/", "http://web:8080/", "http://web:8080/headers")
    assert out.count("hello from server") == 2, out + mesh.logs()
    headers = json.loads(out.split("hello from server\n")[-1])
    # The server side learnt the client's SPIFFE identity from its certificate.
    assert f"URI={CLIENT_ID}" in headers["x-forwarded-client-cert"]
    assert headers["x-request-id"]
    metrics = mesh.proxies["server"].metrics()
    assert f'peer_identity="{CLIENT_ID}"' in metrics
    # One mTLS connection carried all three requests (curl reused its connection too).
    assert 'remora_tls_handshakes_total{side="server"} 1' in metrics
