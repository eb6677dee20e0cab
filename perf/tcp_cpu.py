"""CPU seconds per GB of each proxy for opaque TCP through mTLS (a meshpair, an opaque port).

    sudo .venv/bin/python -m perf.tcp_cpu [--mib 512] [--runs 3]

A download (server app → client app: the client proxy decrypts, the server proxy encrypts)
and an upload (the other way) of ``--mib`` MiB each; the figure is user+sys of each proxy
process from /proc/PID/stat over the transfer, divided by the bytes moved. Run it from two
worktrees in turn (A B B A ...) to compare a change, and compare medians, best of the two
proxies' sum: on a shared machine one proxy's figure moves by +-15 % from run to run, as the
receiver's kernel work (softirq) lands in one process's context or the other's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from local_cluster import netns
from local_cluster.testing.meshpair import APP_UID, Mesh, Service

PORT = 9000
# The app: "send N" writes N bytes to each connection then closes; "sink" reads to EOF.
APP = r"""
import socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
buf = bytearray(1 << 20)
ls = socket.create_server(("0.0.0.0", port))
while True:
    c, _ = ls.accept()
    if mode == "send":
        left = n
        while left:
            left -= c.send(memoryview(buf)[:min(left, len(buf))])
    else:
        while c.recv_into(buf):
            pass
    c.close()
"""
CLIENT = r"""
import socket, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
buf = bytearray(1 << 20)
c = socket.create_connection((host, port))
got = 0
if mode == "recv":
    while (k := c.recv_into(buf)):
        got += k
else:
    left = n
    while left:
        left -= c.send(memoryview(buf)[:min(left, len(buf))])
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    got = n
assert got == n, (got, n)
"""


def _cpu(pid: int) -> tuple[float, float]:
    """(user, sys) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n = args.mib << 20
    py = sys.executable
    node = netns.Node.create(netns.new_prefix("tcpcpu"))
    mesh = None
    try:
        mesh = Mesh.start(node, Path(py).parent, [Service("blob", PORT, protocol="tcp"),
                                                   Service("sink", PORT + 1, protocol="tcp")],
                          opaque_ports=[PORT, PORT + 1])
        mesh.spawn_app([py, "-c", APP, "send", str(PORT), str(n)])
        mesh.spawn_app([py, "-c", APP, "sink", str(PORT + 1)])
        mesh.wait_port(mesh.server, PORT)
        mesh.wait_port(mesh.server, PORT + 1)
        pids = {k: h.proc.pid for k, h in mesh.proxies.items()}
        for _ in range(args.runs):
            for what, svc, mode in (("download", "blob", "recv"), ("upload", "sink", "send")):
                before = {k: _cpu(p) for k, p in pids.items()}
                t = time.monotonic()
                r = mesh.client.exec([py, "-c", CLIENT, mode, svc, str(PORT if svc == "blob"
                                                                         else PORT + 1), str(n)],
                                     uid=APP_UID, timeout=300)
                dt = time.monotonic() - t
                assert r.returncode == 0, r.stderr + mesh.logs()
                time.sleep(0.2)  # the proxies finish their close
                gb = n / 1e9
                cols = []
                for k, p in pids.items():
                    (u0, s0), (u1, s1) = before[k], _cpu(p)
                    cols.append(f"{k} {(u1 - u0 + s1 - s0) / gb:.3f} (user {(u1 - u0) / gb:.3f} "
                                f"sys {(s1 - s0) / gb:.3f})")
                print(f"{what:8} {args.mib} MiB {dt:6.2f} s  CPU s/GB  " + "  ".join(cols),
                      flush=True)
    finally:
        if mesh is not None:
            mesh.close()
        node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
