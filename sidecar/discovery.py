"""The proxy's control-plane client: connect, authenticate, get a certificate, apply snapshots.

``run_discovery(runtime, settings)`` runs forever:

* connect to ``REMORA_CONTROL_PLANE`` over TLS (verified with ``REMORA_TRUST_ROOT``), send
  ``hello`` with the workload token, wait for ``welcome``;
* ask for a certificate: the key and CSR are made by ``python -m sidecar.csr_helper`` in a
  child process (this process never imports cryptography), the key stays in the workdir;
* apply each snapshot atomically through ``runtime.apply_config`` and ACK it, or NACK it with
  the error text (the runtime keeps its last good snapshot);
* renew the certificate at 45-55 % of its lifetime; reconnect with exponential backoff and
  full jitter; while away, the runtime keeps serving with its last good config and cert.

Standard library only (plus control_plane.api's stdlib modules): see the memory budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import random
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.api import discovery as wire
from control_plane.api import skew
from control_plane.api.model import ProxyConfig
from control_plane.api.ports import DEFAULT_TRUST_DOMAIN, DISCOVERY_PORT
from control_plane.api.version import version
from control_plane.api.wsclient import WebSocket, WebSocketError, connect

log = logging.getLogger("remora.proxy.discovery")
# REMORA_VERSION_OVERRIDE: a rehearsed "next" release on one host (docs/upgrade.md).
PROXY_VERSION = os.environ.get("REMORA_VERSION_OVERRIDE", "").strip() or version()
DEFAULT_SERVER_NAME = "remora-control.remora-system.svc"
IDLE_TIMEOUT = 75.0  # the server pings every 30 s; silence this long means the stream is dead
IDLE_TIMEOUT_ENV = "REMORA_CONTROL_PLANE_IDLE_TIMEOUT"
CSR_RETRY = 5.0


@dataclass
class DiscoverySettings:
    host: str
    port: int
    pod: str
    namespace: str
    pod_ip: str
    service_account: str
    token_file: Path
    trust_root: Path
    workdir: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    server_name: str | None = None  # TLS name to verify; default: the address itself
    template_hash: str = ""  # the injection template that made this pod (REMORA_TEMPLATE_HASH)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    idle_timeout: float = IDLE_TIMEOUT  # longest silence (no frame, no ping) before reconnecting

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DiscoverySettings:
        """Read the proxy's environment; ValueError naming the missing or bad variable."""
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ValueError(f"{name} is not set (needed to talk to the control plane)")
            return value

        addr = need("REMORA_CONTROL_PLANE")
        host, sep, port = addr.rpartition(":")
        if not sep:
            host, port = addr, str(DISCOVERY_PORT)
        if not port.isdigit() or not host:
            raise ValueError(f"REMORA_CONTROL_PLANE={addr!r}: expected host:port")
        return cls(
            host=host.strip("[]"), port=int(port), pod=need("POD_NAME"),
            namespace=need("POD_NAMESPACE"), pod_ip=env.get("POD_IP", ""),
            service_account=env.get("SERVICE_ACCOUNT", "default"),
            token_file=Path(need("REMORA_TOKEN_FILE")), trust_root=Path(need("REMORA_TRUST_ROOT")),
            workdir=Path(need("REMORA_WORKDIR")),
            trust_domain=env.get("REMORA_TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN,
            server_name=env.get("REMORA_CONTROL_PLANE_SAN") or None,
            template_hash=env.get("REMORA_TEMPLATE_HASH", "").strip(),
            idle_timeout=_seconds(env, IDLE_TIMEOUT_ENV, IDLE_TIMEOUT),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def reason(exc: BaseException) -> str:
    """What a reconnect warning says: the error's text, or its type when it has none."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def settings_from_proxy(s: Any, workdir: str = "") -> DiscoverySettings:
    """Map the proxy's own ``sidecar.settings.Settings`` onto the environment names above
    (``workdir``: the runtime's own, used when the settings name none)."""
    env = {
        "REMORA_CONTROL_PLANE": s.control_plane, "POD_NAME": s.pod_name,
        "POD_NAMESPACE": s.pod_namespace, "POD_IP": s.pod_ip, "SERVICE_ACCOUNT": s.service_account,
        "REMORA_TOKEN_FILE": s.token_file, "REMORA_TRUST_ROOT": s.trust_root,
        "REMORA_WORKDIR": s.workdir or workdir,
        "REMORA_TRUST_DOMAIN": s.trust_domain,
        "REMORA_CONTROL_PLANE_SAN": os.environ.get("REMORA_CONTROL_PLANE_SAN", ""),
        "REMORA_TEMPLATE_HASH": os.environ.get("REMORA_TEMPLATE_HASH", ""),
        IDLE_TIMEOUT_ENV: os.environ.get(IDLE_TIMEOUT_ENV, ""),
    }
    return DiscoverySettings.from_env({k: str(v or "") for k, v in env.items()})


class Rejected(Exception):
    """The control plane refused this proxy (bad token...): retried with backoff, logged."""


class DiscoveryClient:
    def __init__(self, runtime: Any, settings: DiscoverySettings) -> None:
        self.runtime = runtime
        self.s = settings
        self.dir = settings.workdir / "identity"
        self.applied_version: str | None = None
        self.cert_renew_at: float | None = None  # loop time; None: no certificate yet
        self.connected = False
        self.sessions = 0
        self._ids = itertools.count(1)
        self._csr_pending: str | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.ignored_fields: set[str] = set()  # snapshot fields skipped; each reported once

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        failures = 0
        while True:
            try:
                await self._session()
            except (OSError, WebSocketError, Rejected, TimeoutError, ssl.SSLError) as exc:
                log.warning("control plane %s:%d: reconnecting: %s", self.s.host, self.s.port,
                            reason(exc))
            except Exception:  # a bug must not end discovery: the proxy keeps its last config
                log.exception("discovery session failed")
            finally:
                # A stream that was established and then ended: reconnect soon.
                failures = 1 if self.connected else failures + 1
                self.connected = False
                if self._renewer:
                    self._renewer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._renewer
                    self._renewer = None
            cap = min(self.s.backoff_max, self.s.backoff_initial * 2 ** min(failures, 16))
            await asyncio.sleep(random.uniform(cap / 4, cap))  # jitter: no reconnect storms

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.s.trust_root))
        return ctx

    async def _session(self) -> None:
        ws = await connect(self.s.host, self.s.port, wire.PATH, self._ssl(),
                           server_hostname=self.s.server_name or self.s.host)
        try:
            await ws.send_text(wire.encode(
                wire.HELLO, token=self._token(), pod=self.s.pod, namespace=self.s.namespace,
                proxy_version=PROXY_VERSION, template_hash=self.s.template_hash, ip=self.s.pod_ip,
                last_version=self.applied_version,
            ))
            welcome = wire.decode(await asyncio.wait_for(ws.recv(), 30), (wire.WELCOME, wire.ERROR))
            if welcome["type"] == wire.ERROR:
                raise Rejected(f"refused: {welcome['reason']}")
            self.identity = str(welcome["identity"])
            self.connected = True
            self.sessions += 1
            self._csr_pending = None
            self.ignored_fields = set()  # the new stream's server has not heard them yet
            log.info("connected to the control plane as %s (%s)", welcome["proxy_id"], self.identity)
            self._renewer = asyncio.create_task(self._renew_loop(ws))
            while True:
                data = await ws.recv(self.s.idle_timeout)
                await self._on_message(ws, data)
        finally:
            await ws.close()

    def _token(self) -> str:
        try:
            return self.s.token_file.read_text().strip()
        except OSError as exc:
            raise Rejected(f"cannot read the workload token {self.s.token_file}: {exc.strerror}") from None

    async def _on_message(self, ws: WebSocket, data: str | bytes) -> None:
        try:
            msg = wire.decode(data, (wire.SNAPSHOT, wire.CERTIFICATE, wire.ERROR))
        except wire.ProtocolError as exc:
            log.warning("ignoring a bad message from the control plane: %s", exc)
            return
        if msg["type"] == wire.SNAPSHOT:
            await self._on_snapshot(ws, msg)
        elif msg["type"] == wire.CERTIFICATE:
            await self._on_certificate(msg)
        else:
            log.error("control plane error: %s", msg["reason"])
            if msg.get("request_id") and msg.get("request_id") == self._csr_pending:
                self._csr_pending = None  # the renew loop retries after CSR_RETRY
            if msg.get("fatal"):
                raise Rejected(str(msg["reason"]))

    # -- snapshots ---------------------------------------------------------------------------

    async def _on_snapshot(self, ws: WebSocket, msg: dict[str, Any]) -> None:
        version = str(msg["version"])
        if version == self.applied_version:
            await ws.send_text(wire.encode(wire.ACK, version=version))
            return
        ignored: list[str] = []
        try:
            # A newer control plane may send fields this proxy does not know: skip them.
            cfg = ProxyConfig.from_dict(msg["config"], ignored)
            result = self.runtime.apply_config(cfg)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # ConfigError, ValueError from the runtime, or anything else
            reason = str(exc) or type(exc).__name__
            log.error("rejected configuration %s (keeping %s): %s", version, self.applied_version, reason)
            await ws.send_text(wire.encode(wire.NACK, version=version, reason=reason))
            return
        self.applied_version = version
        log.info("applied configuration %s", version)
        new = sorted({skew.field_path(p) for p in ignored} - self.ignored_fields)
        if new:
            self.ignored_fields.update(new)
            log.warning("ignored snapshot fields this proxy (%s) does not know: %s",
                        PROXY_VERSION, ", ".join(new))
            await ws.send_text(wire.encode(wire.ACK, version=version, ignored=new))
            return
        await ws.send_text(wire.encode(wire.ACK, version=version))

    # -- certificates ------------------------------------------------------------------------

    async def _renew_loop(self, ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self.cert_renew_at
            if self._csr_pending is None and (due is None or loop.time() >= due):
                try:
                    await self._send_csr(ws)
                except (OSError, WebSocketError, RuntimeError) as exc:
                    log.error("cannot request a certificate: %s", exc)
                await asyncio.sleep(CSR_RETRY)  # an answer comes, or we ask again
                continue
            await asyncio.sleep(1.0 if due is None else max(0.2, min(due - loop.time(), 5.0)))

    async def _send_csr(self, ws: WebSocket) -> None:
        rid = f"{os.getpid()}-{next(self._ids)}"
        key_path = self.dir / f"key.{rid}.pem"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar.csr_helper", "--identity", self.identity,
            "--key-out", str(key_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()  # the session ended: do not leave the helper behind
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"csr_helper failed: {err.decode().strip()}")
        self._csr_pending = rid
        await ws.send_text(wire.encode(wire.CSR, request_id=rid, csr=out.decode(), token=self._token()))

    async def _on_certificate(self, msg: dict[str, Any]) -> None:
        rid = str(msg["request_id"])
        key_path = self.dir / f"key.{rid}.pem"
        if rid != self._csr_pending or not key_path.exists():
            log.warning("ignoring a certificate for an unknown request %s", rid)
            return
        key = key_path.read_bytes()
        chain, roots = str(msg["chain"]).encode(), str(msg["roots"]).encode()
        try:
            result = self.runtime.apply_certificate(key, chain, roots)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # keep the current certificate; the renew loop asks again
            log.error("cannot install the certificate (keeping the current one): %s", exc)
            key_path.unlink(missing_ok=True)
            self._csr_pending = None
            return
        # Keep the current key/cert in the workdir (for inspection); drop older pending keys.
        os.replace(key_path, self.dir / "key.pem")
        (self.dir / "cert-chain.pem").write_bytes(chain)
        (self.dir / "root-cert.pem").write_bytes(roots)
        for stale in self.dir.glob("key.*-*.pem"):
            with contextlib.suppress(OSError):
                stale.unlink()
        self._csr_pending = None
        ttl = float(msg.get("ttl_seconds") or 24 * 3600)
        self.cert_renew_at = asyncio.get_running_loop().time() + ttl * random.uniform(0.45, 0.55)
        log.info("certificate installed for %s, valid until %s", self.identity, msg["not_after"])


async def run_discovery(runtime: Any, settings: Any = None) -> None:
    """Run the control-plane client forever.

    ``settings``: a DiscoverySettings, the proxy's ``sidecar.settings.Settings``, or None (read
    the environment). A settings error is logged and ends the proxy (it cannot become ready).
    """
    try:
        if settings is None:
            settings = DiscoverySettings.from_env()
        elif not isinstance(settings, DiscoverySettings):
            settings = settings_from_proxy(settings, str(getattr(runtime, "workdir", "") or ""))
    except ValueError as exc:
        log.error("control-plane client: %s", exc)
        stop = getattr(runtime, "stop", None)
        if stop is not None:
            stop(1)
        return
    await DiscoveryClient(runtime, settings).run()


run = run_discovery  # the name sidecar.runtime calls
