"""At the open-files limit the proxy backs off accepting instead of spinning: a real proxy
whose RLIMIT_NOFILE is lowered, flooded with connections that hold a descriptor each, keeps
its CPU low and its log small, counts the back-offs, and serves normal requests again once
the descriptors are free. The start-up raise of the soft limit is checked on a real process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mesh_harness import APP_UID, APPS, Mesh, Service

from control_plane.api import ports

HOLDER = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((sys.argv[1], 8080))
    except BlockingIOError:
        pass
    socks.append(s)
print("open", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def _exhausted(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("remora_accept_fd_exhausted_total{"))


@pytest.mark.root
def test_accept_backs_off_at_the_fd_limit(node, bin_dir) -> None:
    mesh = Mesh.start(node, bin_dir, [Service("echo", 8080)])
    try:
        mesh.spawn_app([sys.executable, APPS, "http", "8080"])
        mesh.wait_port(mesh.server, 8080)
        server = mesh.proxies["server"]
        pid = server.proc.pid
        open_fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        limit = open_fds + 40
        # As the proxy's uid: without CAP_SYS_RESOURCE only the owner may change its limits.
        subprocess.run(["setpriv", f"--reuid={ports.PROXY_UID}", f"--regid={ports.PROXY_GID}",
                        "--clear-groups", "prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"],
                       check=True)
        assert "remora-proxy" in Path(f"/proc/{pid}/cmdline").read_text()
        log_before = len(server.log_text())
        # uid 1337 is not intercepted on the client: these go straight to the server pod,
        # are redirected to its inbound listener, and each holds a descriptor while the
        # proxy waits for a ClientHello that never comes.
        holder = mesh.client.spawn([sys.executable, "-c", HOLDER, mesh.server.ip, "300", "4"],
                                   uid=ports.PROXY_UID, gid=ports.PROXY_GID, stdout=subprocess.PIPE)
        try:
            assert holder.stdout.readline().strip() == b"open"
            time.sleep(0.5)
            cpu0 = _cpu_seconds(pid)
            time.sleep(2.0)
            cpu = (_cpu_seconds(pid) - cpu0) / 2.0
            assert cpu < 0.1, f"proxy used {cpu:.0%} CPU while out of descriptors"
        finally:
            holder.wait(20)
        log = server.log_text()[log_before:]
        lines = [x for x in log.splitlines() if "accept failed" in x]
        assert 1 <= len(lines) <= 8, lines[:10]  # at most about one a second
        assert "Too many open files" in lines[0] and "pausing accepts" in lines[0]
        # The held connections are gone: normal requests (and the metrics port) work again.
        deadline = time.monotonic() + 20
        while True:
            r = mesh.client.exec(["curl", "-s", "--max-time", "3", "http://echo:8080/"], uid=APP_UID)
            if r.stdout.startswith("hello") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.stdout.startswith("hello"), (r.stdout, r.stderr, mesh.logs()[-3000:])
        assert _exhausted(server.metrics()) > 0
        assert server.proc.poll() is None
    finally:
        mesh.close()


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 512))\n"
            "from sidecar.fdlimit import raise_nofile\n"
            "print(raise_nofile(), resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(512, 512) (512, 512)"
