"""The limits in the real proxy (remora-proxy, iptables interception, mTLS between two pods):
an app attacking its own outbound proxy gets Envoy's answers, the proxy's RSS stays bounded,
and its normal requests keep working. The relays alone, on every case and both HTTP/2
codecs: test_attacks_h1.py, test_attacks_h2.py."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_harness import APP_UID, Mesh

from local_cluster import netns

pytestmark = pytest.mark.root

# Run in the client pod as the app: raw sockets to web:8080 (redirected to the outbound proxy).
ATTACK = textwrap.dedent("""
    import socket, sys, time
    def conn():
        return socket.create_connection(("web", 8080), timeout=5)
    def until_close(s):
        out = b""
        while True:
            try:
                c = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return out
            if not c:
                return out
            out += c
    kind = sys.argv[1]
    if kind == "slowloris":
        socks = [conn() for _ in range(20)]
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\\r\\nhost: web\\r\\nx-slow: ")
        t = time.monotonic()
        outs = [until_close(s) for s in socks]
        print(round(time.monotonic() - t, 1), *sorted({o[:12].decode() for o in outs}))
    elif kind == "endless":
        s, sent = conn(), 0
        s.sendall(b"GET / HTTP/1.1\\r\\nhost: web\\r\\nx-endless: ")
        try:
            while sent < 64 << 20:
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        print(sent, until_close(s)[:12].decode())
""")


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(netns.new_prefix("attk"))
    try:
        m = Mesh.start_web(node, Path(sys.executable).parent,
                           proxy_env={"REMORA_REQUEST_HEADERS_TIMEOUT": "1"})
        try:
            yield m
        finally:
            m.close()
    finally:
        node.destroy()


def _app(mesh: Mesh, *args: str, timeout: float = 30) -> str:
    r = mesh.client.exec(list(args), uid=APP_UID, timeout=timeout)
    assert r.returncode == 0, r.stderr + mesh.logs()
    return r.stdout


def _status(mesh: Mesh, *curl_args: str) -> str:
    return _app(mesh, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                *curl_args)


def _rss_kb(mesh: Mesh) -> int:
    with open(f"/proc/{mesh.proxies['client'].proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _headers(n: int) -> list[str]:
    return [arg for i in range(n) for arg in ("-H", f"x-h{i}: v")]


@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
def test_header_count_is_431_on_both_protocols(mesh, version):
    assert _status(mesh, version, *_headers(101), "http://web:8080/") == "431"
    # 90 pass the limit (the HTTP/1.1-only test app cannot answer HTTP/2: the mesh's 503)
    assert _status(mesh, version, *_headers(90), "http://web:8080/") == (
        "200" if version == "--http1.1" else "503")


def test_connect_is_403_and_absolute_form_is_routed_by_its_authority(mesh):
    r = mesh.client.exec(["curl", "-sS", "--max-time", "10", "-p", "-x", "http://web:8080",
                          "https://evil.example/"], uid=APP_UID, timeout=30)
    assert "CONNECT tunnel failed, response 403" in r.stderr, r.stderr
    out = _app(mesh, "curl", "-sS", "--max-time", "10", "--request-target",
               "http://web:8080/headers", "-H", "Host: forged", "http://web:8080/")
    assert '"host": "web:8080"' in out.lower().replace("'", '"'), out


def test_slowloris_gets_408_and_endless_header_431_with_bounded_memory(mesh):
    before = _rss_kb(mesh)
    out = _app(mesh, sys.executable, "-c", ATTACK, "slowloris").split()
    assert float(out[0]) < 3 and out[1:] == ["HTTP/1.1", "408"], out
    sent, _, status = _app(mesh, sys.executable, "-c", ATTACK, "endless").strip().partition(" ")
    assert int(sent) < 16 << 20 and status in ("HTTP/1.1 431", ""), (sent, status)
    assert _rss_kb(mesh) - before < 16 * 1024
    assert _status(mesh, "http://web:8080/") == "200"
