"""Each scenario sets up the same client/server pods and returns what to load and what to watch."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.ca import CertificateAuthority
from local_cluster import netns
from local_cluster.testing.meshpair import Mesh, Service
from perf.bench import certs, haproxy, nginx
from perf.bench.procstat import wait_for_port
from perf.bench.topology import (
    APP_PORT,
    BULK_PORT,
    H2_PORT,
    SERVER_CORE,
    Topology,
    pin,
    port_open,
    python,
)

# What the runner measures: wrk + fixed rate, h2load (GET 1 KB), h2load (gRPC unary), bulk.
HTTP1, H2, GRPC, TCP = "http1", "h2", "grpc", "tcp"


@dataclass
class Target:
    url: str  # what the load generator in the client pod requests
    kind: str = HTTP1
    proxies: dict[str, int] = field(default_factory=dict)  # name -> pid, measured for CPU and RSS
    handshake_counter: Callable[[], int] | None = None  # server side TLS handshakes so far
    python_proxies: bool = False  # the proxies are Python processes: py-spy can profile them
    grpc_body: str | None = None  # the gRPC workload's request body file (h2load -d)


def start_app(topo: Topology, kind: str = HTTP1) -> int:
    """nginx in the server pod, on the port that ``kind`` loads; returns that port."""
    port = {HTTP1: APP_PORT, H2: H2_PORT, GRPC: H2_PORT, TCP: BULK_PORT}[kind]
    conf = nginx.write_site(topo.workdir / "nginx", APP_PORT,
                            h2_port=H2_PORT if kind in (H2, GRPC) else None,
                            bulk_port=BULK_PORT if kind == TCP else None)
    topo.spawn(topo.server, ["nginx", "-c", str(conf)], core=SERVER_CORE, log="nginx")
    wait_for_port(lambda: port_open(topo.server, "127.0.0.1", port))
    return port


def _path(kind: str) -> str:
    return {TCP: f"/{nginx.BULK_NAME}", GRPC: nginx.GRPC_PATH}.get(kind, "/1k")


def _grpc_body(topo: Topology, kind: str) -> str | None:
    return str(nginx.write_grpc_request(topo.workdir)) if kind == GRPC else None


def direct(topo: Topology, kind: str = HTTP1) -> Target:
    port = start_app(topo, kind)
    return Target(url=f"http://{topo.server.ip}:{port}{_path(kind)}", kind=kind,
                  grpc_body=_grpc_body(topo, kind))


def server_handshakes(mesh: Mesh) -> int:
    """TLS handshakes the server-side proxy has accepted (flat during a run = pooled)."""
    m = re.search(r'remora_tls_handshakes_total\{side="server"\} (\d+)',
                  mesh.proxies["server"].metrics())
    return int(m.group(1)) if m else -1


def mesh_pair(topo: Topology, kind: str = HTTP1, proxy_env: dict[str, str] | None = None) -> Target:
    """The two pods meshed (remora-init + remora-proxy from static bootstraps, STRICT mTLS):
    the load generator (uid 1000) calls the service VIP, which the client pod intercepts."""
    port = start_app(topo, kind)
    protocol = {HTTP1: "http", H2: "http2", GRPC: "grpc", TCP: "tcp"}[kind]
    mesh = Mesh.start(topo.node, Path(python()).parent, [Service("web", port, protocol)],
                      opaque_ports=[port] if kind == TCP else (), pods=(topo.client, topo.server),
                      proxy_env=proxy_env)
    topo.cleanups.append(mesh.close)
    procs = {f"proxy-{name}": h.proc.pid for name, h in mesh.proxies.items()}
    for pid in procs.values():
        pin(pid, SERVER_CORE)
    return Target(url=f"http://web:{port}{_path(kind)}", kind=kind, proxies=procs,
                  handshake_counter=lambda: server_handshakes(mesh), python_proxies=True,
                  grpc_body=_grpc_body(topo, kind))


def mesh_telemetry(topo: Topology) -> Target:
    """``mesh`` with tracing at 1% (spans to a real OTLP/HTTP receiver in the node namespace)
    and access logs on (Envoy's text format, to the proxies' stdout, a file); the metrics are
    on in every mesh scenario. Compare with ``mesh`` of the same run."""
    spans = topo.workdir / "spans"
    spans.mkdir()
    receiver = Path(__file__).with_name("otlp_receiver.py")
    topo.procs.append(netns.spawn_in(topo.node.netns, [
        python(), str(receiver), str(netns.GATEWAY), "4318", str(spans)]))
    return mesh_pair(topo, HTTP1, {
        "REMORA_TRACE_ENDPOINT": f"http://{netns.GATEWAY}:4318/v1/traces",
        "REMORA_TRACE_SAMPLING": "1", "REMORA_ACCESS_LOG": "text"})


def haproxy_pair(topo: Topology, kind: str = HTTP1) -> Target:
    """Two HAProxy processes doing the sidecars' job for ``kind`` (see perf/bench/haproxy.py)."""
    if shutil.which("haproxy") is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    port = start_app(topo, kind)
    pems = certs.haproxy_pems(CertificateAuthority.generate(), topo.workdir / "haproxy-certs")
    ip = topo.server.ip
    if kind in (H2, GRPC):
        server_cfg = haproxy.h2_server_side_config(ip, port, pems)
        client_cfg = haproxy.h2_client_side_config(ip, pems)
    elif kind == TCP:
        server_cfg = haproxy.tcp_server_side_config(ip, port, pems)
        client_cfg = haproxy.tcp_client_side_config(ip, pems)
    else:
        server_cfg = haproxy.server_side_config(ip, port, pems)
        client_cfg = haproxy.client_side_config(ip, pems)
    procs = {}
    for side, pod, text in (("server", topo.server, server_cfg), ("client", topo.client, client_cfg)):
        cfg = topo.workdir / f"haproxy-{side}.cfg"
        cfg.write_text(text)
        procs[f"haproxy-{side}"] = topo.spawn(
            pod, ["haproxy", "-db", "-f", str(cfg)], core=SERVER_CORE, log=f"haproxy-{side}"
        ).pid
    wait_for_port(lambda: port_open(topo.server, topo.server.ip, 15006))
    wait_for_port(lambda: port_open(topo.client, "127.0.0.1", 15001))
    return Target(url=f"http://127.0.0.1:15001{_path(kind)}", kind=kind, proxies=procs,
                  grpc_body=_grpc_body(topo, kind))


# name -> (how to set it up, its kind). Scenarios of one kind form a family: the runner sets
# all of a family up at once and alternates their repetitions (A B C A B C ...), so each
# ratio is taken pair by pair within one time slice instead of across the whole run.
SCENARIOS: dict[str, Callable[[Topology], Target]] = {
    "direct": direct,
    "haproxy": haproxy_pair,
    "mesh": mesh_pair,
    "mesh-telemetry": mesh_telemetry,
    "direct-h2": lambda topo: direct(topo, H2),
    "haproxy-h2": lambda topo: haproxy_pair(topo, H2),
    "mesh-h2": lambda topo: mesh_pair(topo, H2),
    "direct-grpc": lambda topo: direct(topo, GRPC),
    "haproxy-grpc": lambda topo: haproxy_pair(topo, GRPC),
    "mesh-grpc": lambda topo: mesh_pair(topo, GRPC),
    "direct-tcp": lambda topo: direct(topo, TCP),
    "haproxy-tcp": lambda topo: haproxy_pair(topo, TCP),
    "mesh-tcp": lambda topo: mesh_pair(topo, TCP),
}


def kind_of(name: str) -> str:
    """The family a scenario belongs to, from its name (``mesh-h2`` → h2, ``mesh`` → http1)."""
    suffix = name.rsplit("-", 1)[-1]
    return suffix if suffix in (H2, GRPC, TCP) else HTTP1


def families(names: list[str]) -> list[tuple[str, list[str]]]:
    """``names`` grouped by kind, in the order each kind first appears."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(kind_of(n), []).append(n)
    return list(out.items())


def fixed_rate_script(topo: Topology) -> Path:
    """Copy the fixed-rate client where every uid can read it (the checkout may be private)."""
    src = Path(__file__).with_name("fixed_rate.py")
    dst = topo.workdir / "fixed_rate.py"
    shutil.copy(src, dst)
    return dst
