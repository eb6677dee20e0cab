"""Real proxies configured by a real remora-control: certificates, mTLS between namespaces,
a new endpoint pushed without restarts, and STRICT mTLS refusing a plaintext client."""

from __future__ import annotations

import json

import pytest
from cp_mesh import CpMesh, peer_authentication, service, wait_for

pytestmark = pytest.mark.root
VIP = "198.19.0.10"
HOSTS = {"echo.beta": VIP, "echo.beta.svc.cluster.local": VIP}


def bodies(mesh: CpMesh, pod, n: int) -> dict:
    r = mesh.run_app(pod, "count", "http://echo.beta:8080/", str(n))
    assert r.returncode == 0, r.stderr + mesh.logs()
    return json.loads(r.stdout)


def test_two_namespaces_mtls_new_endpoint_and_strict(node, bin_dir) -> None:
    mesh = CpMesh.start(node, bin_dir)
    try:
        mesh.apply("svc-echo", service("echo", "beta", VIP, 8080, {"app": "echo"}))
        server = mesh.add_pod("server", "beta", "server", {"app": "echo"})
        mesh.serve(server, 8080, "server-1")
        client = mesh.add_pod("client", "alpha", "client", {"app": "client"}, hosts=HOSTS)
        outsider = mesh.add_pod("outsider", "alpha", "default", {"app": "outsider"}, meshed=False)
        status = mesh.wait_synced(["server.beta", "client.alpha"])
        assert status["server.beta"]["identity"] == "spiffe://cluster.local/ns/beta/sa/server"
        assert status["client.alpha"]["certs_issued"] == 1
        assert bodies(mesh, client, 20) == {"bodies": {"server-1": 20}, "failed": 0}

        # A second endpoint: the client's proxy learns it without any restart.
        server2 = mesh.add_pod("server2", "beta", "server", {"app": "echo"})
        mesh.serve(server2, 8080, "server-2")
        wait_for(lambda: "server-2" in bodies(mesh, client, 20)["bodies"], 15, "server-2 to get traffic")
        cfg = json.loads(mesh.remoractl("proxy-config", "client.alpha", "-o", "json").stdout)["config"]
        (cluster,) = [c for c in cfg["clusters"] if c["name"] == "echo.beta.svc.cluster.local|8080"]
        assert sorted(e["address"] for e in cluster["endpoints"]) == sorted([server.ip, server2.ip])
        assert {e["identity"] for e in cluster["endpoints"]} == {"spiffe://cluster.local/ns/beta/sa/server"}

        # PERMISSIVE: plaintext from an unmeshed pod is accepted...
        plain = ["curl", "-sS", "--max-time", "3", f"http://{server.ip}:8080/"]
        assert outsider.exec(plain).stdout.strip() == "server-1"
        # ...STRICT in the server's namespace: it is refused, meshed clients keep working.
        before = mesh.proxy_status()
        mesh.apply("pa-beta", peer_authentication("default", "beta", "STRICT"))
        for p in ("server.beta", "server2.beta"):  # their inbound policy changed
            mesh.wait_new_version(p, before[p]["acked_version"])
        assert mesh.remoractl("proxy-config", "server.beta").stdout.count("inbound mTLS: STRICT") == 1
        r = outsider.exec(plain)
        assert r.returncode != 0 and "server-1" not in r.stdout
        got = bodies(mesh, client, 40)
        assert got["failed"] == 0 and set(got["bodies"]) == {"server-1", "server-2"}, mesh.logs()
    finally:
        mesh.close()
