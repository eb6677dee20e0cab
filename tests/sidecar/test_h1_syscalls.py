"""HTTP/1.1 through a pair of sidecars: one write per side per request (issue 15).

What a read produces goes out in one ``transport.write`` per side (over mTLS: one TLS write,
one socket write), so a keep-alive request costs each proxy two socket writes: the request
on, the response back. strace counts the proxies' write-family syscalls over 100 requests on
one app connection (the responses fit in one write each).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
from mesh_harness import APP_UID, Mesh

pytestmark = pytest.mark.root
WRITES = ("write", "writev", "sendmsg", "sendto", "sendmmsg")
N = 100


@pytest.fixture
def mesh(node, bin_dir):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (make deps installs it)")
    m = Mesh.start_web(node, bin_dir)
    try:
        yield m
    finally:
        m.close()


def _write_calls(summary: str) -> int:
    """Write-family calls in an ``strace -c`` summary."""
    total = 0
    for line in summary.splitlines():
        cols = line.split()
        if cols and cols[-1] in WRITES and cols[3].isdigit():
            total += int(cols[3])
    return total


def test_two_socket_writes_per_request_per_proxy(mesh: Mesh) -> None:
    get = ["curl", "-sS", "--max-time", "20", "-o", "/dev/null"]
    assert mesh.client.exec([*get, "http://web:8080/"], uid=APP_UID, timeout=30).returncode == 0
    tracers = {name: subprocess.Popen(["strace", "-f", "-qq", "-c", "-e", "trace=" + ",".join(WRITES),
                                       "-p", str(h.proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name, h in mesh.proxies.items()}
    try:
        time.sleep(0.5)  # attached
        r = mesh.client.exec([*get, *["http://web:8080/"] * N], uid=APP_UID, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(0.2)
    finally:
        for t in tracers.values():
            t.send_signal(signal.SIGINT)
    writes = {name: _write_calls(t.communicate(timeout=10)[1]) for name, t in tracers.items()}
    # Two per request; a little room for the new app connection and a metrics/health write.
    assert all(2 * N <= n <= 2 * N + 6 for n in writes.values()), writes
