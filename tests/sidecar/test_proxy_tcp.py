"""Opaque TCP through a pair of sidecars: redis (client-first, sniffed) and a server-first
protocol on a declared opaque port and on a sniffed port (detection gives up)."""

from __future__ import annotations

import sys

import pytest
from mesh_harness import APP_UID, APPS, Mesh, Service

pytestmark = pytest.mark.root

GREET_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rwb")
print(f.readline().decode().strip())  # the server speaks first
f.write(b"HELO remora\\r\\n"); f.flush()
print(f.readline().decode().strip())
f.write(b"QUIT\\r\\n"); f.flush()
print(f.readline().decode().strip())
print(repr(f.read()))  # then EOF
"""


HALF_CLOSE_CLIENT = """
import socket, sys
s = socket.create_connection(("upper", 2600), timeout=5)
s.sendall(b"half-close " * 10000)
s.shutdown(socket.SHUT_WR)  # we are done sending; the answer must still come back
data = b""
while chunk := s.recv(65536):
    data += chunk
print(len(data), data[:22].decode())
"""


# 16 MiB each way, read slowly at first: the proxies' reads land in shared buffers that a
# congested transport may still hold (rxbuf.py), so this proves no byte is overwritten.
BULK_CLIENT = """
import hashlib, random, socket, sys, threading, time
letters = bytes(97 + i % 26 for i in range(256))
body = random.Random(7).randbytes(16 << 20).translate(letters)
s = socket.create_connection(("upper", 2600), timeout=20)
def send():
    s.sendall(body)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
h, n = hashlib.sha256(), 0
while chunk := s.recv(4096 if n < (1 << 20) else 1 << 20):
    h.update(chunk)
    n += len(chunk)
    if n < (1 << 20):
        time.sleep(0.001)  # a slow reader: the relays upstream of it must hold back
print(n, h.hexdigest() == hashlib.sha256(body.upper()).hexdigest())
"""


def test_half_close_crosses_the_mesh(node, bin_dir):
    mesh = Mesh.start(node, bin_dir, [Service("upper", 2600, "tcp")])
    try:
        mesh.spawn_app([sys.executable, APPS, "upper", "2600"])
        mesh.wait_port(mesh.server, 2600)
        r = mesh.client.exec([sys.executable, "-c", HALF_CLOSE_CLIENT], uid=APP_UID, timeout=15)
        assert r.stdout.split() == ["110000", "HALF-CLOSE", "HALF-CLOSE"], r.stderr + mesh.logs()
        assert 'remora_tls_handshakes_total{side="server"} 1' in mesh.proxies["server"].metrics()
        r = mesh.client.exec([sys.executable, "-c", BULK_CLIENT], uid=APP_UID, timeout=60)
        assert r.stdout.split() == [str(16 << 20), "True"], r.stderr + mesh.logs()
    finally:
        mesh.close()


def test_redis_and_server_first_protocols(node, bin_dir):
    services = [Service("redis", 6379, "tcp"), Service("smtp", 2525, "tcp"),
                Service("greet", 2526, "tcp")]
    mesh = Mesh.start(node, bin_dir, services, opaque_ports=[2525])
    try:
        mesh.spawn_app(["redis-server", "--port", "6379", "--save", "", "--appendonly", "no",
                        "--protected-mode", "no", "--bind", "0.0.0.0"])
        mesh.spawn_app([sys.executable, APPS, "greet", "2525"])
        mesh.spawn_app([sys.executable, APPS, "greet", "2526"])
        for port in (6379, 2525, 2526):
            mesh.wait_port(mesh.server, port)
        cli = ["redis-cli", "-h", "redis", "-p", "6379"]
        r = mesh.client.exec([*cli, "SET", "mesh", "remora"], uid=APP_UID, timeout=10)
        assert r.stdout.strip() == "OK", r.stderr + mesh.logs()
        r = mesh.client.exec([*cli, "GET", "mesh"], uid=APP_UID, timeout=10)
        assert r.stdout.strip() == "remora"
        # 2525 is declared opaque (no sniffing); 2526 is sniffed and detection times out.
        for name, port in (("smtp", 2525), ("greet", 2526)):
            r = mesh.client.exec([sys.executable, "-c", GREET_CLIENT, name, str(port)],
                                 uid=APP_UID, timeout=10)
            assert r.stdout.splitlines() == ["220 greeter ready", "250 HELO remora",
                                             "250 QUIT", "b''"], r.stderr + mesh.logs()
        server_metrics = mesh.proxies["server"].metrics()
        # All three went over mTLS (remora-tcp) into the server pod.
        assert 'remora_tls_handshakes_total{side="server"} 4' in server_metrics
    finally:
        mesh.close()
