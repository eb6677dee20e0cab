"""Workload certificates with a 20 s TTL rotate (at about half their lifetime) several times
while one long-lived HTTP/2 connection carries steady traffic: no request fails."""

from __future__ import annotations

import os
import re

import pytest
from cp_mesh import APP_UID, CpMesh, service, wait_for

pytestmark = pytest.mark.root
VIP = "198.19.0.40"
SECONDS = 32


def test_rotation_under_http2_traffic(node, bin_dir) -> None:
    mesh = CpMesh.start(node, bin_dir, cert_ttl="20s")
    try:
        mesh.apply("svc", service("h2", "beta", VIP, 8080, {"app": "h2"}, port_name="http2"))
        server = mesh.add_pod("server", "beta", "server", {"app": "h2"})
        docroot = mesh.tmp / "www"
        docroot.mkdir()
        (docroot / "index.html").write_text("hello over h2\n")
        os.chmod(docroot, 0o755)
        mesh.apps.append(server.spawn(["nghttpd", "--no-tls", "-d", str(docroot), "8080"],
                                      uid=APP_UID, gid=APP_UID))
        wait_for(lambda: server.exec(["ss", "-Hltn", "sport = :8080"]).stdout.strip(), 10, "nghttpd")
        client = mesh.add_pod("client", "alpha", "client", {"app": "client"}, hosts={"h2.beta": VIP})
        ids = ["server.beta", "client.alpha"]
        before = mesh.wait_synced(ids)
        # One client connection (-c1), one stream at a time, 40 requests/s for SECONDS.
        r = client.exec(["h2load", "-c", "1", "-m", "1", "--rps", "40", "-D", str(SECONDS),
                         "http://h2.beta:8080/index.html"], uid=APP_UID, gid=APP_UID,
                        timeout=SECONDS + 30)
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", r.stdout)
        assert m, r.stdout + r.stderr + mesh.logs()
        total, done, ok, failed, errored, timeout = map(int, m.groups())
        assert (failed, errored, timeout) == (0, 0, 0) and ok == done > SECONDS * 30, r.stdout
        assert "1 total, 1 started, 1 done, 1 succeeded" not in r.stdout  # sanity: real load
        after = mesh.proxy_status()
        for p in ids:
            # 20 s TTL renewed at ~10 s: at least two renewals per proxy during the run.
            assert after[p]["certs_issued"] - before[p]["certs_issued"] >= 2, after[p]
    finally:
        mesh.close()
