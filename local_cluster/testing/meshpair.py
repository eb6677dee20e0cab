"""Two meshed pods: "client" and "server", each with remora-init rules and a remora-proxy
(uid 1337) running from a static bootstrap (no control plane: what tests and benchmarks use).

    mesh = Mesh.start(node, bin_dir, services=[Service("echo", 8080)])
    try:
        mesh.client.exec(["curl", "-s", f"http://echo:8080/"], uid=APP_UID)
    finally:
        mesh.close()

Certificates come from a throw-away ``CertificateAuthority``; the client proxy's config sends
each service's VIP:port to the server pod's IP and target port, expecting the server's
SPIFFE identity (override ``expect_identity`` to test a mismatch). Everything made here
(processes, files) is removed by ``close``; the namespaces belong to the ``node`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.api import ports
from control_plane.api.model import PERMISSIVE, STRICT, cluster_name
from control_plane.api.spiffe import spiffe_id
from control_plane.ca import CertificateAuthority
from local_cluster import netns

APP_UID = 1000  # apps run as a non-proxy uid so that their traffic is intercepted
CLIENT_ID = spiffe_id("default", "client")
SERVER_ID = spiffe_id("default", "server")
VIP_BASE = "198.19.0."
VIP6_BASE = "fd00:19::"

__all__ = ["APP_UID", "CLIENT_ID", "SERVER_ID", "STRICT", "PERMISSIVE", "Mesh", "ProxyHandle",
           "Service", "VIP_BASE", "VIP6_BASE"]


@dataclass
class Service:
    """A service served by the server pod: ``name:port`` → server pod IP:``target_port``."""

    name: str
    port: int
    protocol: str = "http"
    target_port: int | None = None
    vip: str = ""
    ipv6: bool = False  # an IPv6 VIP and the server pod's IPv6 address
    timeout: float | None = None  # route timeout (504 when exceeded)
    endpoints: bool = True  # False: the cluster has no endpoint (503 no healthy upstream)

    @property
    def hostname(self) -> str:
        return f"{self.name}.default.svc.cluster.local"


@dataclass
class ProxyHandle:
    pod: netns.Pod
    proc: subprocess.Popen
    workdir: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def admin(self, path: str, method: str = "GET") -> str:
        """GET/POST an admin endpoint (127.0.0.1:15000) from inside the pod."""
        return self.http(f"http://127.0.0.1:{ports.ADMIN_PORT}{path}", method)

    def metrics(self) -> str:
        return self.http(f"http://127.0.0.1:{ports.METRICS_PORT}/metrics")

    def http(self, url: str, method: str = "GET") -> str:
        r = self.pod.exec(["curl", "-sS", "-X", method, "--max-time", "5", url], uid=ports.PROXY_UID)
        return r.stdout


@dataclass
class Mesh:
    node: netns.Node
    bin_dir: Path
    services: list[Service]
    client: netns.Pod
    server: netns.Pod
    ca: CertificateAuthority
    proxies: dict[str, ProxyHandle] = field(default_factory=dict)
    apps: list[subprocess.Popen] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="remora-mesh-")))

    @classmethod
    def start(
        cls,
        node: netns.Node,
        bin_dir: Path,
        services: Sequence[Service],
        *,
        mtls_mode: str = STRICT,
        opaque_ports: Sequence[int] = (),
        expect_identity: str = SERVER_ID,
        drain_seconds: float = 5.0,
        pods: tuple[netns.Pod, netns.Pod] | None = None,
        proxy_env: dict[str, str] | None = None,
    ) -> Mesh:
        """``pods``: an existing (client, server) pair to mesh instead of adding two to ``node``."""
        services = list(services)
        for i, s in enumerate(services):
            s.vip = s.vip or (f"{VIP6_BASE}{10 + i:x}" if s.ipv6 else f"{VIP_BASE}{10 + i}")
            s.target_port = s.target_port or s.port
        client, server = pods or (node.add_pod("client"), node.add_pod("server"))
        mesh = cls(node, bin_dir, services, client, server, CertificateAuthority.generate())
        os.chmod(mesh.tmp, 0o755)
        try:
            for pod in (client, server):
                pod.exec([str(bin_dir / "remora-init"), "--proxy-uid", str(ports.PROXY_UID),
                          "--proxy-gid", str(ports.PROXY_GID)], check=True)
            client.write_hosts({s.name: s.vip for s in services})
            client_cfg = mesh._client_config(expect_identity, opaque_ports)
            server_cfg = {"inbound": {"mtls_mode": mtls_mode}, "opaque_ports": list(opaque_ports)}
            mesh.proxies["client"] = mesh._start_proxy(client, CLIENT_ID, client_cfg, drain_seconds,
                                                       proxy_env)
            mesh.proxies["server"] = mesh._start_proxy(server, SERVER_ID, server_cfg, drain_seconds,
                                                       proxy_env)
            for name in ("client", "server"):
                mesh.wait_ready(name)
        except BaseException:
            mesh.close()
            raise
        return mesh

    def _client_config(self, identity: str, opaque_ports: Sequence[int]) -> dict:
        outbound, clusters = [], []
        for s in self.services:
            cname = cluster_name(s.hostname, s.port)
            clusters.append({"name": cname, "service": s.hostname, "port": s.port,
                             "protocol": s.protocol,
                             "endpoints": [{"address": self.server.ip6 if s.ipv6 else self.server.ip,
                                            "port": s.target_port,
                                            "identity": identity}] if s.endpoints else []})
            routes = [{"name": "all", "destinations": [{"cluster": cname}], "timeout": s.timeout}]
            outbound.append({"service": s.hostname, "addresses": [s.vip], "port": s.port,
                             "protocol": s.protocol, "default_cluster": cname,
                             "routes": routes if s.timeout else []})
        return {"version": "test-1", "outbound": outbound, "clusters": clusters,
                "opaque_ports": list(opaque_ports)}

    def _start_proxy(self, pod: netns.Pod, identity: str, config: dict,
                     drain_seconds: float, extra_env: dict[str, str] | None = None) -> ProxyHandle:
        workdir = self.tmp / pod.name
        workdir.mkdir()
        key, chain = self.ca.issue(identity)
        (workdir / "key.pem").write_bytes(key)
        (workdir / "cert-chain.pem").write_bytes(chain)
        (workdir / "roots.pem").write_bytes(self.ca.root_pem)
        bootstrap = {"config": config,
                     "tls": {"cert_chain": "cert-chain.pem", "key": "key.pem", "roots": "roots.pem"}}
        (workdir / "bootstrap.json").write_text(json.dumps(bootstrap))
        for p in [workdir, *workdir.iterdir()]:
            os.chown(p, ports.PROXY_UID, ports.PROXY_GID)
        log = self.tmp / f"{pod.name}-proxy.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_NAME": pod.name,
               "POD_NAMESPACE": "default", "POD_IP": pod.ip, "SERVICE_ACCOUNT": pod.name,
               "REMORA_BOOTSTRAP": str(workdir / "bootstrap.json"),
               "REMORA_WORKDIR": str(workdir), "REMORA_DRAIN_SECONDS": str(drain_seconds),
               "REMORA_LOG_LEVEL": os.environ.get("REMORA_TEST_LOG_LEVEL", "info"),
               **(extra_env or {})}
        with open(log, "wb") as out:
            proc = pod.spawn([str(self.bin_dir / "remora-proxy")], uid=ports.PROXY_UID,
                             gid=ports.PROXY_GID, env=env, stdout=out, stderr=subprocess.STDOUT)
        return ProxyHandle(pod, proc, workdir, log)

    def wait_ready(self, name: str, timeout: float = 15.0) -> None:
        h = self.proxies[name]
        r = h.pod.exec([str(self.bin_dir / "remora-proxy"), "wait", "--timeout", str(timeout)],
                       timeout=timeout + 5)
        if r.returncode != 0:
            raise RuntimeError(f"{name} proxy not ready: {r.stderr.strip()}\n{h.log_text()}")

    def spawn_app(self, argv: Sequence[str], pod: netns.Pod | None = None,
                  uid: int = APP_UID, **kw) -> subprocess.Popen:
        """Start an app process in ``pod`` (default: server) as a non-proxy uid."""
        proc = (pod or self.server).spawn(list(argv), uid=uid, gid=uid, **kw)
        self.apps.append(proc)
        return proc

    def wait_port(self, pod: netns.Pod, port: int, timeout: float = 10.0) -> None:
        """Wait until something listens on ``port`` in ``pod``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = pod.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port} in {pod.name}")

    def logs(self) -> str:
        """Both proxies' logs, for assertion messages."""
        return "".join(f"\n--- {n} proxy log ---\n{h.log_text()}" for n, h in self.proxies.items())

    def close(self) -> None:
        for proc in self.apps:
            netns.stop_process(proc, timeout=3)
        for h in self.proxies.values():
            netns.stop_process(h.proc, timeout=8)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)
