"""HTTP/1.1 through a pair of sidecars, with real iptables interception and mTLS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
from mesh_harness import APP_UID, CLIENT_ID, SERVER_ID, Mesh

pytestmark = pytest.mark.root


@pytest.fixture
def mesh(node, bin_dir):
    m = Mesh.start_web(node, bin_dir)
    try:
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
    assert headers["_remote"] == "127.0.0.6"  # the inbound hop leaves from the passthrough source
    for _ in range(3):  # new app connections each time: the proxy-to-proxy one is reused
        assert curl(mesh, "http://web:8080/") == "hello from server\n"
    metrics = mesh.proxies["server"].metrics()
    assert f'peer_identity="{CLIENT_ID}"' in metrics
    # One mTLS connection carried all six requests from four app connections.
    assert 'remora_tls_handshakes_total{side="server"} 1' in metrics
    assert "remora_upstream_pool_reused_total 5" in mesh.proxies["client"].metrics()


def test_outbound_metrics_name_the_upstream_identity(mesh):
    """The client side labels its requests with the identity the server proxy proved in the
    handshake, on a new proxy-to-proxy connection and on a pooled one alike."""
    for _ in range(2):
        assert curl(mesh, "http://web:8080/") == "hello from server\n"
    outbound = [line for line in mesh.proxies["client"].metrics().splitlines()
                if line.startswith("remora_requests_total{") and 'direction="outbound"' in line]
    assert outbound == ['remora_requests_total{direction="outbound",'
                        'service="web.default.svc.cluster.local",response_code="200",'
                        f'peer_identity="{SERVER_ID}"}} 2'], outbound


def test_chunked_response_to_http11_and_http10_clients(mesh):
    out = curl(mesh, "-v", "http://web:8080/stream")
    assert out == "part0;part1;part2;"
    out = curl(mesh, "-v", "--http1.0", "http://web:8080/stream")
    assert out == "part0;part1;part2;"  # no chunked framing for a 1.0 client: ends at close
    r = mesh.client.exec(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--http1.0",
                          "http://web:8080/stream"], uid=APP_UID, timeout=15)
    assert "transfer-encoding" not in r.stdout.lower() and "connection: close" in r.stdout.lower()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_50mb_chunked_upload_streams_with_bounded_memory(mesh):
    pids = [h.proc.pid for h in mesh.proxies.values()]
    before = {pid: _rss_kb(pid) for pid in pids}
    peak = dict(before)
    size = 50 * 1024 * 1024
    proc = subprocess.Popen(mesh.client.command(["bash", "-c",
        f"head -c {size} /dev/zero | curl -sS -v --max-time 60 -X POST -T - "
        "-H 'Content-Type: application/octet-stream' http://web:8080/upload"], uid=APP_UID),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:  # sample both proxies' RSS while the body streams through
        for pid in pids:
            peak[pid] = max(peak[pid], _rss_kb(pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err + mesh.logs()
    result = json.loads(out)
    zeros = hashlib.sha256()
    for _ in range(50):
        zeros.update(bytes(1024 * 1024))
    assert result == {"bytes": size, "sha256": zeros.hexdigest(), "chunked": "chunked"}
    assert "Transfer-Encoding: chunked" in err
    assert "HTTP/1.1 100 Continue" in err  # curl asked Expect: 100-continue; it was relayed
    for pid in pids:  # never buffered whole: growth stays far below the 50 MB body
        assert peak[pid] - before[pid] < 16 * 1024, (before, peak)


def test_slow_reader_does_not_grow_proxy_memory(mesh):
    """A 24 MiB download read at 8 MiB/s: the proxies hold back (backpressure), not buffer."""
    pids = [h.proc.pid for h in mesh.proxies.values()]
    before = {pid: _rss_kb(pid) for pid in pids}
    peak = dict(before)
    proc = subprocess.Popen(mesh.client.command(
        ["curl", "-sS", "--max-time", "30", "--limit-rate", "8M", "-o", "/dev/null", "-w",
         "%{size_download}", "http://web:8080/big?mb=24"], uid=APP_UID),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        for pid in pids:
            peak[pid] = max(peak[pid], _rss_kb(pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    assert out == str(24 << 20), err + mesh.logs()
    for pid in pids:
        assert peak[pid] - before[pid] < 12 * 1024, (before, peak)


WS_CLIENT = """
import asyncio, aiohttp, sys
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect("http://web:8080/ws") as ws:
            for i in range(3):
                await ws.send_str(f"msg{i}")
                print((await ws.receive()).data)
            await ws.send_bytes(bytes(range(256)) * 1000)
            print(len((await ws.receive()).data))
asyncio.run(main())
"""


def test_websocket_echo(mesh):
    r = mesh.client.exec([sys.executable, "-c", WS_CLIENT], uid=APP_UID, timeout=20)
    assert r.returncode == 0, r.stderr + mesh.logs()
    assert r.stdout.split() == ["echo:msg0", "echo:msg1", "echo:msg2", "256000"]
    assert 'response_code="101"' in mesh.proxies["server"].metrics()


RAW_CLIENT = """
import socket, sys
payload = sys.stdin.buffer.read()
s = socket.create_connection(("web", 8080), timeout=5)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
data = b""
try:
    while chunk := s.recv(65536):
        data += chunk
except (ConnectionResetError, TimeoutError):
    pass
text = data.decode("latin-1")
sys.stdout.write(text if sys.argv[1:] == ["full"] else (text.split("\\r\\n")[0] or "CLOSED"))
"""

MALFORMED = {
    "cl_and_te": b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    "two_cl": b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
    "te_obfuscated": b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_space": b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "huge_header": b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "garbage": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_requests_are_refused_and_proxy_stays_healthy(mesh, name):
    r = mesh.client.exec([sys.executable, "-c", RAW_CLIENT], uid=APP_UID, timeout=20,
                         input=MALFORMED[name].decode("latin-1"))
    assert r.returncode == 0, r.stderr
    refusal = ("HTTP/1.1 431 Request Header Fields Too Large" if name == "huge_header"
               else "HTTP/1.1 400 Bad Request")  # over Envoy's 60 KiB: 431
    assert r.stdout in (refusal, "CLOSED"), r.stdout
    # Nothing reached the app: the server side counted no request at all.
    assert "remora_requests_total{" not in mesh.proxies["server"].metrics()
    assert "remora_downstream_protocol_errors_total 1" in mesh.proxies["client"].metrics()
    assert "hello from server" in curl(mesh, "http://web:8080/")


def test_pipelined_requests_are_answered_in_order(mesh):
    body = b"x" * 3000
    payload = (b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
               b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n%s"
               b"GET /headers HTTP/1.1\r\nHost: web\r\nx-pipe: 3\r\nConnection: close\r\n\r\n"
               % (len(body), body))
    r = mesh.client.exec([sys.executable, "-c", RAW_CLIENT, "full"], uid=APP_UID, timeout=20,
                         input=payload.decode())
    out = r.stdout
    assert out.count("HTTP/1.1 200 OK") == 3, out + mesh.logs()
    first, second, third = (out.index(s) for s in ("hello from server", '"bytes": 3000', '"x-pipe"'))
    assert first < second < third


def test_hop_by_hop_headers_are_removed(mesh):
    out = curl(mesh, "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret",
               "-H", "Keep-Alive: timeout=5", "-H", "Proxy-Connection: keep-alive",
               "-H", "TE: trailers", "-H", "X-End: kept", "-H", "x-request-id: abc-123",
               "http://web:8080/headers")
    headers = json.loads(out)
    for hop in ("x-hop", "keep-alive", "proxy-connection", "te"):
        assert hop not in headers, headers
    assert headers["x-end"] == "kept" and headers["x-request-id"] == "abc-123"
