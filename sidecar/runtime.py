"""The proxy process: listeners, current config and certificate, counters, lifecycle.

``apply_config`` and ``apply_certificate`` are the two hooks the control-plane client calls
(and the static bootstrap uses at start). Both swap whole immutable objects (a ``Router``, a
``TlsContexts``), so a connection or request sees one version from start to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from control_plane.api import ports
from control_plane.api.model import ConfigError, ProxyConfig

from . import admin, dns, dnsresolve, inbound, memtune, outbound, tracing
from .accesslog import AccessLog
from .dnstable import NameTable
from .http1 import H1Pool
from .labels import Labeler
from .listeners import Listener, bind
from .metrics_merge import AppMetrics, merged
from .routing import Router
from .settings import LOG_LEVELS, Settings, default_workdir, load_bootstrap, python_log_level
from .stats import INBOUND, OUTBOUND, Stats
from .tls import TlsContexts, build_contexts, write_private
from .upstream import Connector

log = logging.getLogger("remora.proxy")


def _load_h2() -> ModuleType | None:
    try:
        return importlib.import_module("sidecar.http2")
    except ModuleNotFoundError as e:
        if e.name != "sidecar.http2":
            log.warning("HTTP/2 support unavailable (%s): HTTP/2 is relayed as opaque TCP", e)
        return None


class ProxyRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.labels = Labeler()  # Istio metric label keys for the current config and identity
        self.app_metrics = AppMetrics(settings.app_metrics) if settings.app_metrics else None
        self.access_log = AccessLog(settings.access_log) if settings.access_log != "off" else None
        self.tracer = tracing.from_settings(
            settings.trace_endpoint, settings.trace_sampling, settings.pod_name or "unknown",
            settings.pod_namespace, settings.pod_name, settings.trust_domain)
        self.config: ProxyConfig | None = None
        self.router = Router(ProxyConfig())
        self._opaque: frozenset[int] = frozenset(settings.opaque_ports)
        self.tls: TlsContexts | None = None
        self.identity: str | None = None
        self.cert_generation = 0
        self.h1_pool = H1Pool(self.stats)
        # Open HTTP downstream connections (both protocols): drain closes or GOAWAYs them.
        self.http_conns: set[Any] = set()
        self.outbound_connector = Connector(lambda: self.tls, self.stats)
        self.inbound_connector = Connector(lambda: self.tls, self.stats,
                                           source_address=ports.INBOUND_PASSTHROUGH_SOURCE)
        self.h2: Any = _load_h2()  # sidecar.http2 or None (checked before each use)
        if self.h2 is not None:
            from .http import h2select

            self.stats.http2_codec = h2select.select()  # logged; remora_http2_codec_info
        # The HTTP/2 upstream pools, one per direction, handed to each downstream connection.
        self.h2_pools = {} if self.h2 is None else {
            OUTBOUND: self.h2.H2Pool(self.outbound_connector),
            INBOUND: self.h2.H2Pool(self.inbound_connector)}
        self.own_ports = settings.own_ports()
        self.draining = False
        self.listeners: list[Listener] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping: asyncio.Event | None = None  # made in start(), on the running loop
        self.exit_code = 0
        self.started_at = time.time()
        self.dns_table = NameTable()
        self.dns: dns.DnsProxy | None = None
        # ServiceEntry resolution DNS: names resolved in the background (sidecar/dnsresolve.py).
        self.resolver = dnsresolve.DnsResolver(self._resolutions_changed, settings.dns_refresh_rate)
        self.workdir = Path(settings.workdir or default_workdir())
        settings.workdir = str(self.workdir)  # the control-plane client writes its key there

    # -- the two control-plane hooks -----------------------------------------------------
    def apply_config(self, cfg: ProxyConfig) -> None:
        """Atomically switch to ``cfg``; raises ConfigError (the caller NACKs with it)."""
        own = sorted(self.own_ports & {o.port for o in cfg.outbound})
        if own:
            raise ConfigError(f"config.outbound: port {own[0]} is one of the proxy's own ports")
        if cfg.trust_bundle.strip() and "BEGIN CERTIFICATE" not in cfg.trust_bundle:
            raise ConfigError("config.trust_bundle: not PEM certificates")
        self.resolver.set_names(dnsresolve.names_of(cfg))
        router = Router(dnsresolve.overlay(cfg, self.resolver.resolved), self.router)  # state carries over
        self.router = router
        self._opaque = router.opaque_ports | frozenset(self.settings.opaque_ports)
        self.config = cfg
        self.dns_table = NameTable.build(cfg, self.settings.pod_namespace)
        self.labels.update(cfg)
        if self.tracer is not None and cfg.workload is not None:
            self.tracer.set_workload(cfg.workload.app, cfg.workload.namespace)
        log.info("configuration %s applied (%d services, %d clusters)",
                 cfg.version or cfg.content_hash(), len(cfg.outbound), len(cfg.clusters))

    def apply_certificate(self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> None:
        """Write the files into the workdir and build new TLS contexts (open connections
        keep theirs). Raises ValueError when the material does not load."""
        self.cert_generation += 1
        g = self.cert_generation
        self.workdir.mkdir(parents=True, exist_ok=True)
        key, chain, roots = (self.workdir / f"{n}-{g}.pem" for n in ("key", "cert-chain", "roots"))
        write_private(key, key_pem)
        write_private(chain, chain_pem)
        write_private(roots, roots_pem)
        try:
            self.apply_certificate_files(str(chain), str(key), str(roots))
        except ValueError:
            for f in (key, chain, roots):
                f.unlink(missing_ok=True)
            raise
        # Files of older generations are no longer needed once their contexts are built.
        for old in self.workdir.glob("*.pem"):
            if not old.name.endswith(f"-{g}.pem"):
                with contextlib.suppress(OSError):
                    old.unlink()

    def apply_certificate_files(self, chain: str, key: str, roots: str) -> None:
        tls = build_contexts(chain, key, roots)
        self.tls = tls
        self.identity = tls.identity
        self.labels.update(identity=tls.identity)
        log.info("certificate for %s loaded (expires %s)", tls.identity, tls.not_after)

    def _resolutions_changed(self) -> None:
        """A DNS name's addresses changed: the same config, its resolved endpoints replaced."""
        if self.config is not None:
            self.router = Router(dnsresolve.overlay(self.config, self.resolver.resolved), self.router)

    # -- state used by the listeners -----------------------------------------------------
    def opaque_ports(self, router: Router) -> frozenset[int]:
        return self._opaque

    def is_draining(self) -> bool:
        return self.draining

    @property
    def ready(self) -> bool:
        return bool(self.listeners) and self.config is not None and self.tls is not None \
            and not self.draining

    def local_addresses(self, sock: socket.socket) -> set[str]:
        addrs = {"127.0.0.1", "::1", self.settings.pod_ip}
        with contextlib.suppress(OSError):
            addrs.add(sock.getsockname()[0].removeprefix("::ffff:"))
        return addrs

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.stopping = asyncio.Event()
        if s.bootstrap:  # first: a bad bootstrap fails before anything is bound
            b = load_bootstrap(s.bootstrap)
            self.apply_certificate_files(str(b.cert_chain), str(b.key), str(b.roots))
            self.apply_config(b.config)
        self.servers.append(await admin.serve("127.0.0.1", s.admin_port, self._admin))
        self.servers.append(await admin.serve("::", s.health_port, self._health))
        self.servers.append(await admin.serve("::", s.metrics_port, self._metrics))
        self.servers.append(await admin.serve("::", s.agent_port, self._agent))
        self.listeners = [
            Listener("outbound", bind("::", s.outbound_port),
                     lambda c: outbound.on_accept(self, c), self.stats.fd_exhausted),
            Listener("inbound", bind("::", s.inbound_port), lambda c: inbound.on_accept(self, c),
                     self.stats.fd_exhausted),
        ]
        if s.dns_capture:
            self.dns = await dns.serve(lambda: self.dns_table, s.resolv_conf, s.dns_port)
        self.resolver.start()
        if s.control_plane and not s.bootstrap:
            self._start_discovery()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(self.drain()))
        loop.add_signal_handler(signal.SIGINT, lambda: self.stop(0))
        log.info("remora-proxy listening: outbound :%d, inbound :%d, admin 127.0.0.1:%d",
                 s.outbound_port, s.inbound_port, s.admin_port)
        if self.h2 is not None:
            from .http import h2select

            log.info("HTTP/2 codec: %s", h2select.describe(self.stats.http2_codec))
        memtune.settle()

    def _start_discovery(self) -> None:
        try:
            discovery = importlib.import_module("sidecar.discovery")
        except ModuleNotFoundError:
            log.error("no control-plane client in this build (sidecar.discovery); use --bootstrap")
            self.stop(1)
            return
        asyncio.get_running_loop().create_task(discovery.run(self, self.settings))

    async def run(self) -> int:
        await self.start()
        await self.stopping.wait()  # type: ignore[union-attr]  # start() made it
        self._close_everything()
        return self.exit_code

    def stop(self, code: int) -> None:
        self.exit_code = code
        if self.stopping is not None:
            self.stopping.set()

    async def drain(self) -> None:
        """Stop accepting, let requests in flight finish (up to the deadline), then exit 0."""
        if self.draining:
            return
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_seconds
        log.info("draining for up to %.1fs (%d connections open)",
                 self.settings.drain_seconds, self.stats.active_connections)
        for listener in self.listeners:
            listener.close()
        self.h1_pool.close_all()
        while time.monotonic() < deadline:
            for conn in list(self.http_conns):
                conn.close_if_idle()
            if self.stats.active_connections <= 0:
                break
            await asyncio.sleep(0.05)
        for pool in self.h2_pools.values():  # pooled HTTP/2 upstreams end with GOAWAY, not a reset
            pool.close()
        self.stop(0)

    def _close_everything(self) -> None:
        for listener in self.listeners:
            listener.close()
        for server in self.servers:
            server.close()
        if self.dns is not None:
            self.dns.close()
        self.resolver.close()
        self.h1_pool.close_all()

    # -- admin endpoints -----------------------------------------------------------------
    def _admin(self, method: str, path: str, query: dict[str, list[str]]) -> admin.Reply:
        if path == "/config_dump":
            return _json(self.config_dump())
        if path == "/stats":
            return _json({**self.stats.as_dict(), "rss_bytes": rss_bytes()})
        if path == "/logging":
            if method != "POST":
                return 405, "text/plain", b"use POST /logging?level=debug\n"
            level = (query.get("level") or [""])[0].lower()
            if level not in LOG_LEVELS:
                return 400, "text/plain", f"level must be one of {', '.join(LOG_LEVELS)}\n".encode()
            logging.getLogger().setLevel(python_log_level(level))
            return 200, "text/plain", f"log level {level}\n".encode()
        if path == "/drain":
            if method != "POST":
                return 405, "text/plain", b"use POST /drain\n"
            asyncio.get_running_loop().create_task(self.drain())
            return 200, "text/plain", b"draining\n"
        if path == "/ready":
            return self._health(method, "/healthz/ready", query)
        return 404, "text/plain", b"endpoints: /config_dump /stats /logging /drain\n"

    def config_dump(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "version": (cfg.version or cfg.content_hash()) if cfg else None,
            "config": cfg.to_dict() if cfg else None,
            "certificate": {"identity": self.identity,
                            "not_after": self.tls.not_after if self.tls else None},
            "draining": self.draining,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "http2": self.h2 is not None,
            "dns_resolutions": self.resolver.dump(),
        }

    def _health(self, method: str, path: str, query: dict[str, list[str]]) -> admin.Reply:
        if path != "/healthz/ready":
            return 404, "text/plain", b"not found\n"
        if self.ready:
            return 200, "text/plain", b"ready\n"
        missing = [w for w, ok in (("listeners", self.listeners), ("config", self.config),
                                   ("certificate", self.tls), ("not draining", not self.draining))
                   if not ok]
        return 503, "text/plain", f"not ready: {', '.join(missing)}\n".encode()

    async def _metrics(self, method: str, path: str, query: dict[str, list[str]]) -> admin.Reply:
        if path not in ("/metrics", "/stats/prometheus"):
            return 404, "text/plain", b"not found\n"
        own = (self.stats.render_prometheus() + (self.tracer.render() if self.tracer else "")
               + (self.access_log.render() if self.access_log else ""))
        if self.dns is not None:
            own += self.dns.stats.render_prometheus()
        own += self.resolver.render_prometheus()
        text = await merged(own, self.app_metrics)
        return 200, "text/plain; version=0.0.4", text.encode()

    async def _agent(self, method: str, path: str, query: dict[str, list[str]]) -> admin.Reply:
        if path == "/quitquitquit":
            if method != "POST":
                return 405, "text/plain", b"use POST /quitquitquit\n"
            asyncio.get_running_loop().call_later(0.05, self.stop, 0)
            return 200, "text/plain", b"exiting\n"
        if path.startswith("/app-health/"):
            try:
                app_health = importlib.import_module("sidecar.app_health")
            except ModuleNotFoundError:
                return 404, "text/plain", b"app-health probes are not available in this build\n"
            code, text = await app_health.run_probe(path)
            return code, "text/plain", text.encode()
        if path == "/healthz/ready":
            return self._health(method, path, query)
        return 404, "text/plain", b"endpoints: /app-health/... POST /quitquitquit\n"


def _json(obj: object) -> admin.Reply:
    return 200, "application/json", (json.dumps(obj, indent=2) + "\n").encode()


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
