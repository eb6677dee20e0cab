"""The hop between sidecars: mutual TLS only (STRICT), identities checked both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mesh_harness import APP_UID, APPS, CLIENT_ID, PERMISSIVE, Mesh

from control_plane.api import ports
from control_plane.api.spiffe import spiffe_id
from control_plane.ca import CertificateAuthority

pytestmark = pytest.mark.root
MARKER = "remora-secret-marker-7f3a"


def _start(node, bin_dir, **kw) -> Mesh:
    return Mesh.start_web(node, bin_dir, **kw)


def _curl(pod, url: str, uid: int = APP_UID, *extra: str) -> subprocess.CompletedProcess:
    return pod.exec(["curl", "-sS", "--max-time", "5", *extra, url], uid=uid, timeout=15)


def test_strict_bytes_are_tls_and_plaintext_is_refused(node, bin_dir):
    mesh = _start(node, bin_dir)
    try:
        capture = mesh.tmp / "capture.bin"
        sniffer = mesh.spawn_app([sys.executable, APPS, "sniff", "eth0", str(capture), "4"],
                                 uid=0, stdout=subprocess.PIPE)
        assert sniffer.stdout.readline().strip() == b"sniffing"
        r = _curl(mesh.client, "http://web:8080/headers", APP_UID, "-H", f"x-marker: {MARKER}")
        assert r.returncode == 0 and MARKER in r.stdout, r.stderr + mesh.logs()
        sniffer.wait(10)
        frames = capture.read_bytes()
        assert b"\x17\x03\x03" in frames  # TLS application-data records crossed the wire
        assert MARKER.encode() not in frames and b"HTTP/1.1" not in frames

        # Plaintext straight to the app port (uid 1337 bypasses the client's sidecar) and to
        # :15006 itself: the server's inbound listener refuses both under STRICT.
        for port in (8080, ports.INBOUND_PORT):
            r = _curl(mesh.client, f"http://{mesh.server.ip}:{port}/", ports.PROXY_UID)
            assert r.returncode != 0 and "hello" not in r.stdout
        assert "remora_inbound_refused_total 2" in mesh.proxies["server"].metrics()
    finally:
        mesh.close()


def test_permissive_accepts_plaintext_and_mtls(node, bin_dir):
    mesh = _start(node, bin_dir, mtls_mode=PERMISSIVE)
    try:
        r = _curl(mesh.client, f"http://{mesh.server.ip}:8080/headers", ports.PROXY_UID)
        assert r.returncode == 0, r.stderr + mesh.logs()
        assert "x-forwarded-client-cert" not in json.loads(r.stdout)  # plaintext: no identity
        r = _curl(mesh.client, "http://web:8080/headers")
        assert f"URI={CLIENT_ID}" in json.loads(r.stdout)["x-forwarded-client-cert"]
    finally:
        mesh.close()


def test_wrong_server_identity_is_refused(node, bin_dir):
    # The client expects the endpoint to be "sa/other"; the server proves "sa/server".
    mesh = _start(node, bin_dir, expect_identity=spiffe_id("default", "other"))
    try:
        r = mesh.client.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "--max-time", "5", "http://web:8080/"], uid=APP_UID, timeout=15)
        assert r.stdout == "503", r.stdout + mesh.logs()
        time.sleep(0.1)
        metrics = mesh.proxies["client"].metrics()
        # Istio's default retry policy retries connect failures twice (a refused identity is one).
        assert 'remora_upstream_connect_errors_total{reason="identity_mismatch"} 3' in metrics
        assert "remora_requests_total{" not in mesh.proxies["server"].metrics()
    finally:
        mesh.close()


FOREIGN_CLIENT = """
import socket, ssl, sys
d = sys.argv[1]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(f"{d}/chain.pem", f"{d}/key.pem")
ctx.set_alpn_protocols(["remora-h1"])
s = socket.create_connection((sys.argv[2], 8080), timeout=5)
try:
    t = ctx.wrap_socket(s)
    t.sendall(b"GET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n")
    print(t.recv(100) or b"EOF")
except (ssl.SSLError, OSError) as e:
    print("refused", type(e).__name__)
"""


def test_client_certificate_from_another_ca_is_refused(node, bin_dir):
    mesh = _start(node, bin_dir)
    try:
        # A workload certificate with a valid-looking identity, signed by a CA the mesh
        # does not trust, sent straight to the server's inbound side (uid 1337: no sidecar).
        key, chain = CertificateAuthority.generate().issue(CLIENT_ID)
        d = mesh.tmp / "foreign"
        d.mkdir()
        (d / "key.pem").write_bytes(key)
        (d / "chain.pem").write_bytes(chain)
        for f in (d, d / "key.pem", d / "chain.pem"):
            os.chown(f, ports.PROXY_UID, ports.PROXY_GID)
        r = mesh.client.exec([sys.executable, "-c", FOREIGN_CLIENT, str(d), mesh.server.ip],
                             uid=ports.PROXY_UID, timeout=20)
        # TLS 1.3: the client finishes first, then the server's alert closes it (EOF or alert).
        assert r.stdout.strip() in ("b'EOF'", "refused SSLError"), r.stdout + r.stderr
        time.sleep(0.1)
        assert "remora_requests_total{" not in mesh.proxies["server"].metrics()
        assert ('remora_upstream_connect_errors_total{reason="downstream_tls_handshake"} 1'
                in mesh.proxies["server"].metrics())
    finally:
        mesh.close()
