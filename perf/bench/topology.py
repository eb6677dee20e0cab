"""Two pods on a bridge (client and server), a world-readable work dir, processes pinned to cores.

Layout (as in bench-reference.md): the app (nginx) and every proxy run on core 0, the load
generator on core 1, so the proxies' cost shows as lost throughput on core 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from local_cluster import netns

APP_PORT = 8080  # HTTP/1.1, 1 KB responses
H2_PORT = 8081  # the same app over HTTP/2 (h2c, prior knowledge)
BULK_PORT = 9000  # a large file for the opaque TCP transfer
LOAD_UID = 1000  # the load generator runs as an ordinary app uid (intercepted when meshed)
SERVER_CORE = 0
CLIENT_CORE = 1


@dataclass
class Topology:
    node: netns.Node
    client: netns.Pod
    server: netns.Pod
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run first, last added first

    @classmethod
    def create(cls) -> Topology:
        node = netns.Node.create(netns.new_prefix("bench"), ipv6=False)
        try:
            client, server = node.add_pod("client"), node.add_pod("server")
        except Exception:
            node.destroy()
            raise
        workdir = Path(tempfile.mkdtemp(prefix="remora-bench-"))
        workdir.chmod(0o755)  # proxies (uid 1337) and the load generator read files here
        return cls(node, client, server, workdir)

    def spawn(self, pod: netns.Pod, argv: Sequence[str], *, core: int | None, log: str,
              uid: int | None = None, env: dict | None = None) -> subprocess.Popen:
        pinned = ["taskset", "-c", str(core), *argv] if core is not None else list(argv)
        out = open(self.workdir / f"{log}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = pod.spawn(pinned, uid=uid, gid=uid, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        for proc in reversed(self.procs):
            netns.stop_process(proc)
        self.node.destroy()
        shutil.rmtree(self.workdir, ignore_errors=True)


def port_open(pod: netns.Pod, host: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"
    return pod.exec(["python3", "-c", probe], timeout=10).returncode == 0


def pin(pid: int, core: int) -> None:
    """Pin every thread of a running process (the proxies start unpinned)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True,
                   capture_output=True)


def python() -> str:
    """The venv's interpreter (executable by every uid, see scripts/find-python)."""
    return os.environ.get("REMORA_BENCH_PYTHON", sys.executable)
