"""Each scenario sets up the same client/server pods and returns what to load and what to watch."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.ca import CertificateAuthority
from perf.bench import certs, haproxy, nginx
from perf.bench.procstat import wait_for_port
from perf.bench.topology import APP_PORT, SERVER_CORE, Topology, port_open


@dataclass
class Target:
    url: str  # what the load generator in the client pod requests
    proxies: dict[str, int] = field(default_factory=dict)  # name -> pid, measured for CPU and RSS
    handshake_counter: Callable[[], int] | None = None  # server side TLS handshakes so far


def start_app(topo: Topology) -> None:
    conf = nginx.write_site(topo.workdir / "nginx", APP_PORT)
    topo.spawn(topo.server, ["nginx", "-c", str(conf)], core=SERVER_CORE, log="nginx")
    wait_for_port(lambda: port_open(topo.server, "127.0.0.1", APP_PORT))


def direct(topo: Topology) -> Target:
    start_app(topo)
    return Target(url=f"http://{topo.server.ip}:{APP_PORT}/1k")


def haproxy_pair(topo: Topology) -> Target:
    if shutil.which("haproxy") is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    start_app(topo)
    pems = certs.haproxy_pems(CertificateAuthority.generate(), topo.workdir / "haproxy-certs")
    procs = {}
    for side, pod, text in (
        ("server", topo.server, haproxy.server_side_config(topo.server.ip, APP_PORT, pems)),
        ("client", topo.client, haproxy.client_side_config(topo.server.ip, pems)),
    ):
        cfg = topo.workdir / f"haproxy-{side}.cfg"
        cfg.write_text(text)
        procs[f"haproxy-{side}"] = topo.spawn(
            pod, ["haproxy", "-db", "-f", str(cfg)], core=SERVER_CORE, log=f"haproxy-{side}"
        ).pid
    wait_for_port(lambda: port_open(topo.server, topo.server.ip, 15006))
    wait_for_port(lambda: port_open(topo.client, "127.0.0.1", 15001))
    return Target(url="http://127.0.0.1:15001/1k", proxies=procs)


SCENARIOS: dict[str, Callable[[Topology], Target]] = {
    "direct": direct,
    "haproxy": haproxy_pair,
}


def fixed_rate_script(topo: Topology) -> Path:
    """Copy the fixed-rate client where every uid can read it (the checkout may be private)."""
    src = Path(__file__).with_name("fixed_rate.py")
    dst = topo.workdir / "fixed_rate.py"
    shutil.copy(src, dst)
    return dst
