"""An in-process control plane (real aiohttp over TLS on loopback) and a fake proxy runtime."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from control_plane.api import tokens
from control_plane.auth import LocalTokenAuthenticator
from control_plane.ca import CertificateAuthority, issue_serving_cert
from control_plane.server import DiscoveryServer, ServerSettings
from control_plane.sources.files import FilesSource
from sidecar.discovery import DiscoveryClient, DiscoverySettings

TOKEN_KEY = b"0123456789abcdef0123456789abcdef"
BASE = """apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: shop
  labels: {app: reviews, version: v1}
  annotations: {remora.dev/status: "{}"}
spec: {serviceAccountName: reviews}
status: {podIP: 198.18.0.21}
"""


@dataclass
class RunningControlPlane:
    server: DiscoveryServer
    ca: CertificateAuthority
    manifests: Path
    tmp: Path
    port: int
    monitoring_url: str
    client_ssl: ssl.SSLContext
    server_ssl: ssl.SSLContext
    discovery_runner: web.AppRunner | None = None

    async def stop_discovery(self) -> None:
        """The discovery port goes away (the CA and registry stay): streams are cut."""
        if self.discovery_runner is not None:
            await self.discovery_runner.cleanup()
            self.discovery_runner = None

    async def start_discovery(self) -> None:
        """Serve discovery again on the same port."""
        self.discovery_runner, _ = await _serve(self.server.discovery_app(), self.server_ssl, self.port)

    def token(self, namespace: str = "shop", sa: str = "reviews", pod: str = "reviews-v1", **kw) -> str:
        return tokens.mint(TOKEN_KEY, namespace, sa, pod, **kw)

    async def wait(self, predicate, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate():
            if loop.time() > end:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def start_control_plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "base.yaml").write_text(BASE)
    ca = CertificateAuthority.generate()
    key, chain = issue_serving_cert(ca, ["localhost"], ["127.0.0.1"])
    (tmp_path / "srv.key").write_bytes(key)
    (tmp_path / "srv.pem").write_bytes(chain)
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    settings = ServerSettings(cert_ttl=dt.timedelta(seconds=60), debounce_quiet=0.05, debounce_max=1)
    server = DiscoveryServer(ca, LocalTokenAuthenticator(TOKEN_KEY), FilesSource(manifests, 0.05),
                             settings, ca.root_pem.decode())
    discovery, port = await _serve(server.discovery_app(), sctx, 0)
    monitoring, mport = await _serve(server.monitoring_app(), None, 0)
    tasks = [asyncio.create_task(server.run_source()), asyncio.create_task(server.debouncer.run())]
    cctx = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
    cp = RunningControlPlane(server, ca, manifests, tmp_path, port, f"http://127.0.0.1:{mport}", cctx,
                             sctx, discovery)
    await cp.wait(lambda: server.builder is not None)
    try:
        yield cp
    finally:
        for t in tasks:
            t.cancel()
        await cp.stop_discovery()
        await monitoring.cleanup()


async def _serve(app: web.Application, tls: ssl.SSLContext | None, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


@dataclass
class FakeRuntime:
    """Stands in for sidecar.runtime.ProxyRuntime: records what it was given."""

    configs: list = field(default_factory=list)
    certs: list = field(default_factory=list)
    reject: str | None = None

    def apply_config(self, cfg) -> None:
        if self.reject:
            raise ValueError(self.reject)
        self.configs.append(cfg)

    cert_failures: int = 0  # refuse this many certificates first

    def apply_certificate(self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> None:
        if self.cert_failures:
            self.cert_failures -= 1
            raise ValueError("certificate does not load")
        self.certs.append((key_pem, chain_pem, roots_pem))


def settings(cp: RunningControlPlane, token: str, pod: str = "reviews-v1") -> DiscoverySettings:
    (cp.tmp / f"{pod}.token").write_text(token)
    return DiscoverySettings(
        host="127.0.0.1", port=cp.port, pod=pod, namespace="shop", pod_ip="198.18.0.21",
        service_account="reviews", token_file=cp.tmp / f"{pod}.token", trust_root=cp.tmp / "root.pem",
        workdir=cp.tmp / f"work-{pod}", server_name="localhost", backoff_initial=0.05, backoff_max=0.2,
    )


@contextlib.asynccontextmanager
async def running_client(cp: RunningControlPlane, runtime: FakeRuntime, pod: str = "reviews-v1"):
    client = DiscoveryClient(runtime, settings(cp, cp.token(pod=pod), pod))
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
