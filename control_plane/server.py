"""The discovery and CA server (WebSocket over TLS on :15012) and its monitoring app (:15014).

One task per connection reads the proxy's messages (hello, csr, ack, nack); one sender task
per connection pushes snapshots, always the newest one only, so a slow proxy never holds up
the others and never receives a backlog of outdated versions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from control_plane.api import discovery as wire
from control_plane.api import model, skew
from control_plane.api import version as versions
from control_plane.api.spiffe import spiffe_id
from control_plane.api.version import version
from control_plane.auth import Authenticator, AuthError, Caller
from control_plane.builder import ProxyKey, Snapshot, SnapshotBuilder
from control_plane.ca import CertificateAuthority, CSRRefused
from control_plane.debounce import Debouncer
from control_plane.proxies import ProxyState
from control_plane.registry import Registry
from control_plane.sources import Source

log = logging.getLogger("remora.control")
SERVER_VERSION = version()
HELLO_TIMEOUT = 10.0


def _older(proxy_version: str) -> bool:
    lag = versions.skew(proxy_version, SERVER_VERSION)
    return lag is not None and lag > 0


@dataclass
class ServerSettings:
    trust_domain: str = "cluster.local"
    cert_ttl: dt.timedelta = dt.timedelta(hours=24)
    root_namespace: str = "remora-system"
    mesh_mtls_mode: str = model.PERMISSIVE
    debounce_quiet: float = 0.1
    debounce_max: float = 10.0
    revision: str = "default"  # the remora.dev/rev value whose injector points proxies here
    keepalive: float = 30.0  # seconds between WebSocket pings to each proxy


class Connection:
    """One connected proxy: its WebSocket, its state and the snapshot waiting to be sent."""

    def __init__(self, ws: web.WebSocketResponse, state: ProxyState) -> None:
        self.ws = ws
        self.state = state
        self._pending: Snapshot | None = None
        self._wake = asyncio.Event()
        # An older proxy that decodes strictly gets each snapshot pruned to its release's shape.
        self.shape = skew.strict_shape_for(state.proxy_version) if _older(state.proxy_version) else None

    def payload(self, snap: Snapshot) -> str:
        if self.shape is None:
            return snap.payload  # encoded once for every proxy that shares it
        dropped: list[str] = []
        body = skew.downgrade(json.loads(snap.payload), self.state.proxy_version, dropped)
        body = skew.prune(body, self.shape, "config", dropped)
        new = {skew.field_path(p) for p in dropped} - self.state.pruned_fields
        if new:
            self.state.pruned_fields.update(new)
            log.info("proxy %s (%s) does not know %s: left out of its snapshots",
                     self.state.proxy_id, self.state.proxy_version, ", ".join(sorted(new)))
        return json.dumps(body, separators=(",", ":"))

    def offer(self, snap: Snapshot) -> None:
        if self.state.sent_version == snap.config.version and self._pending is None:
            return
        self._pending = snap
        self._wake.set()

    async def sender(self) -> None:
        try:
            await self._send_loop()
        except (ConnectionError, RuntimeError) as exc:  # the stream broke; handle() cleans up
            log.info("stream to %s ended while sending: %s", self.state.proxy_id, exc)

    async def _send_loop(self) -> None:
        while not self.ws.closed:
            await self._wake.wait()
            self._wake.clear()
            snap, self._pending = self._pending, None
            if snap is None:
                continue
            # The config JSON was encoded once for every proxy that shares it: splice it in.
            msg = (f'{{"type":"{wire.SNAPSHOT}","version":"{snap.config.version}",'
                   f'"config":{self.payload(snap)}}}')
            self.state.on_sent(snap)
            await self.ws.send_str(msg)


class DiscoveryServer:
    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: Authenticator,
        source: Source,
        settings: ServerSettings,
        trust_bundle: str,
    ) -> None:
        self.ca = ca
        self.auth = authenticator
        self.source = source
        self.settings = settings
        self.trust_bundle = trust_bundle
        self.connections: dict[str, Connection] = {}
        self.builder: SnapshotBuilder | None = None
        self.metrics: Counter[str] = Counter()
        self.debouncer = Debouncer(self.rebuild, settings.debounce_quiet, settings.debounce_max)
        self._logged: set[str] = set()
        self.last_build_at: float | None = None

    # -- configuration -----------------------------------------------------------------------

    def rebuild(self) -> None:
        """Registry → builder → push to every connected proxy whose snapshot changed."""
        started = time.perf_counter()
        last_good = self.builder.registry.accepted if self.builder else None
        registry = Registry.from_objects(self.source.objects(), last_good)
        builder = SnapshotBuilder(
            registry, self.settings.trust_domain, self.trust_bundle,
            self.settings.root_namespace, self.settings.mesh_mtls_mode,
        )
        self.builder = builder
        self.last_build_at = time.time()
        self.metrics["builds"] += 1
        current = set(builder.notes) | set(registry.errors)
        for note in sorted(current - self._logged):
            log.warning("config: %s", note)
        self._logged = current
        for conn in list(self.connections.values()):
            conn.offer(builder.snapshot_for(conn.state.key))
        log.info(
            "built configuration for %d services in %.1f ms; pushing to %d proxies",
            len(registry.services), (time.perf_counter() - started) * 1000, len(self.connections),
        )

    async def run_source(self) -> None:
        await self.source.run(self.debouncer.trigger)

    # -- the discovery stream ----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.settings.keepalive, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        peer = request.remote or "?"
        conn: Connection | None = None
        sender: asyncio.Task | None = None
        try:
            hello = await self._hello(ws, peer)
            if hello is None:
                return ws
            caller, msg = hello
            conn = self._register(ws, caller, msg, peer)
            sender = asyncio.create_task(conn.sender())
            await ws.send_str(wire.encode(
                wire.WELCOME, proxy_id=conn.state.proxy_id, identity=conn.state.identity,
                protocol=wire.PROTOCOL_VERSION, server_version=SERVER_VERSION,
            ))
            if self.builder is not None:
                conn.offer(self.builder.snapshot_for(conn.state.key))
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                await self._on_message(conn, msg.get("token", ""), frame.data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug: drop this stream (the proxy reconnects), keep the server
            log.exception("stream from %s failed", peer)
        finally:
            if sender is not None:
                sender.cancel()
            if conn is not None and self.connections.get(conn.state.proxy_id) is conn:
                del self.connections[conn.state.proxy_id]
                log.info("proxy %s disconnected", conn.state.proxy_id)
            if not ws.closed:
                await ws.close()
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, counter: str, peer: str) -> None:
        self.metrics[counter] += 1
        log.warning("refused %s: %s", peer, reason)
        await ws.send_str(wire.encode(wire.ERROR, reason=reason, fatal=True))
        await ws.close()

    async def _hello(self, ws: web.WebSocketResponse, peer: str) -> tuple[Caller, dict] | None:
        try:
            frame = await ws.receive(timeout=HELLO_TIMEOUT)
        except TimeoutError:
            await self._refuse(ws, "no hello within 10 s", "hello_errors", peer)
            return None
        if frame.type != WSMsgType.TEXT:
            return None
        try:
            msg = wire.decode(frame.data, (wire.HELLO,))
            caller = await self.auth.authenticate(str(msg["token"]))
        except wire.ProtocolError as exc:
            await self._refuse(ws, str(exc), "hello_errors", peer)
            return None
        except AuthError as exc:
            await self._refuse(ws, f"authentication failed: {exc}", "auth_failures", peer)
            return None
        if msg["namespace"] != caller.namespace or (caller.pod and msg["pod"] != caller.pod):
            await self._refuse(
                ws, f"hello names pod {msg['pod']}.{msg['namespace']} but the token proves "
                f"{caller.pod or '*'}.{caller.namespace}", "auth_failures", peer,
            )
            return None
        return caller, msg

    def _register(self, ws: web.WebSocketResponse, caller: Caller, msg: dict, peer: str) -> Connection:
        pid = wire.proxy_id(str(msg["pod"]), caller.namespace)
        identity = spiffe_id(caller.namespace, caller.service_account, self.settings.trust_domain)
        state = ProxyState(pid, ProxyKey(caller.namespace, str(msg["pod"])), identity,
                           str(msg["proxy_version"]), str(msg.get("ip") or peer),
                           template_hash=str(msg.get("template_hash") or ""))
        lag = versions.skew(state.proxy_version, SERVER_VERSION)
        if lag is None or abs(lag) > 1:
            # Served anyway (best effort), but outside what the protocol promises.
            log.warning("proxy %s runs %s, control plane %s: skew beyond one minor version is "
                        "not supported; upgrade it", pid, state.proxy_version, SERVER_VERSION)
        old = self.connections.get(pid)
        if old is not None:
            # A reconnect while the old stream has not timed out yet: the newest stream wins.
            asyncio.ensure_future(old.ws.close())
        conn = self.connections[pid] = Connection(ws, state)
        self.metrics["connections"] += 1
        log.info("proxy %s connected as %s from %s", pid, identity, peer)
        return conn

    async def _on_message(self, conn: Connection, hello_token: str, data: str) -> None:
        st = conn.state
        try:
            msg = wire.decode(data, (wire.CSR, wire.ACK, wire.NACK))
        except wire.ProtocolError as exc:
            await conn.ws.send_str(wire.encode(wire.ERROR, reason=str(exc), fatal=False))
            return
        if msg["type"] == wire.ACK:
            if st.on_ack(str(msg["version"])):
                self.metrics["acks"] += 1
            ignored = msg.get("ignored")
            if isinstance(ignored, list) and ignored:
                st.ignored_fields.update(str(f) for f in ignored)
                log.warning("proxy %s (%s) ignores snapshot fields it does not know: %s",
                            st.proxy_id, st.proxy_version, ", ".join(map(str, ignored)))
        elif msg["type"] == wire.NACK:
            self.metrics["nacks"] += 1
            st.on_nack(str(msg["version"]), str(msg["reason"]))
            log.warning("proxy %s rejected version %s: %s", st.proxy_id, msg["version"], msg["reason"])
        else:
            await self._on_csr(conn, msg, hello_token)

    async def _on_csr(self, conn: Connection, msg: dict, hello_token: str) -> None:
        st = conn.state
        rid = msg["request_id"]
        try:
            # The token is checked again (it may have expired since hello, or a newer one is sent).
            caller = await self.auth.authenticate(str(msg.get("token") or hello_token))
            identity = spiffe_id(caller.namespace, caller.service_account, self.settings.trust_domain)
            if identity != st.identity:
                raise AuthError(f"token proves {identity}, this stream is {st.identity}")
            chain = self.ca.sign_csr(str(msg["csr"]).encode(), identity, self.settings.cert_ttl)
        except (AuthError, CSRRefused) as exc:
            kind = "auth_failures" if isinstance(exc, AuthError) else "csr_refused"
            self.metrics[kind] += 1
            log.warning("refused CSR of %s: %s", st.proxy_id, exc)
            await conn.ws.send_str(wire.encode(wire.ERROR, reason=str(exc), request_id=rid, fatal=False))
            return
        not_after = (dt.datetime.now(dt.UTC) + self.settings.cert_ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
        st.cert_not_after, st.certs_issued = not_after, st.certs_issued + 1
        self.metrics["certs_issued"] += 1
        await conn.ws.send_str(wire.encode(
            wire.CERTIFICATE, request_id=rid, chain=chain.decode(), roots=self.trust_bundle,
            not_after=not_after, ttl_seconds=self.settings.cert_ttl.total_seconds(),
        ))

    async def _close_streams(self, app: web.Application) -> None:
        # On shutdown, end every stream now (1001: going away): otherwise the server waits for
        # the proxies to hang up, and they only reconnect once the streams are gone.
        conns = list(self.connections.values())
        await asyncio.gather(*(c.ws.close(code=1001, message=b"control plane shutting down")
                               for c in conns), return_exceptions=True)

    def discovery_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(wire.PATH, self.handle)
        app.on_shutdown.append(self._close_streams)
        return app

    # -- monitoring --------------------------------------------------------------------------

    def proxies_view(self) -> dict[str, Any]:
        return {
            "server_version": SERVER_VERSION,
            "revision": self.settings.revision,
            "last_build_at": self.last_build_at,
            "proxies": sorted((c.state.to_dict() for c in self.connections.values()),
                              key=lambda p: p["proxy_id"]),
        }

    async def _proxies(self, request: web.Request) -> web.Response:
        return web.json_response(self.proxies_view())

    async def _config(self, request: web.Request) -> web.Response:
        pid = request.query.get("proxy", "")
        conn = self.connections.get(pid)
        if conn is None:
            known = ", ".join(sorted(self.connections)[:20]) or "none"
            return web.json_response({"error": f"no connected proxy {pid!r}; connected: {known}"},
                                     status=404)
        st = conn.state
        body = st.to_dict()
        body["config"] = st.acked.config.to_dict() if st.acked else None
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = []
        for name in ("builds", "connections", "acks", "nacks", "certs_issued", "csr_refused",
                     "auth_failures", "hello_errors"):
            lines.append(f"# TYPE remora_control_{name}_total counter")
            lines.append(f"remora_control_{name}_total {self.metrics[name]}")
        lines.append("# TYPE remora_control_proxies gauge")
        lines.append(f"remora_control_proxies {len(self.connections)}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def version_view(self) -> dict[str, Any]:
        """This control plane's version and the data plane's, counted (``remoractl version``)."""
        counts = Counter(c.state.proxy_version for c in self.connections.values())
        return {"component": "control-plane", "version": SERVER_VERSION,
                "revision": self.settings.revision, "protocol": wire.PROTOCOL_VERSION,
                "proxies": dict(sorted(counts.items()))}

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(self.version_view())

    async def _ready(self, request: web.Request) -> web.Response:
        if self.builder is None:
            waiting: list[str] = getattr(self.source, "waiting_for", list)()  # kube: kinds not listed yet
            detail = "".join(f"waiting for {w}\n" for w in waiting)
            return web.Response(status=503, text="no configuration built yet\n" + detail)
        return web.Response(text="ready\n")

    def monitoring_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/debug/proxies", self._proxies)
        app.router.add_get("/debug/config", self._config)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/version", self._version)
        return app


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
