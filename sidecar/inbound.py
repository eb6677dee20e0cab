"""Inbound listener (:15006): what a connection to one of this pod's app ports becomes.

remora mTLS (a ClientHello offering a ``remora-*`` ALPN) is terminated and the ALPN value
says what is inside. Anything else is refused under STRICT and served as plaintext under
PERMISSIVE (HTTP/1.1 and HTTP/2 sniffed, the rest relayed opaque, app TLS included). The app
is reached at the original destination from 127.0.0.6.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from control_plane.api.model import DISABLE, STRICT, AuthzPolicy, Endpoint

from . import authz, detect
from .conn import close_counted, serve_guarded
from .http.exchange import FORBIDDEN, Authorizer, RequestAttrs
from .http1 import H1Context, H1Downstream
from .labels import TCP
from .listeners import peek
from .original_dst import original_dst
from .relay import RelayProtocol, SpliceRelay, count_bytes, link
from .stats import INBOUND
from .tcpconn import TcpTelemetry
from .tls import ALPN_H1, ALPN_H2, ALPN_TCP, client_hello_alpns, client_hello_sni, peer_identity
from .tlsbio import TlsWire
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .runtime import ProxyRuntime

log = logging.getLogger("remora.inbound")
HANDSHAKE_TIMEOUT = 10.0


def on_accept(rt: ProxyRuntime, sock: socket.socket) -> None:
    rt.stats.conn_opened(INBOUND)
    try:
        dst = original_dst(sock)
    except OSError:
        dst = None
    if dst is None or dst[1] in rt.own_ports:
        # Not redirected (someone dialled 15006 itself): there is no app port to serve.
        rt.stats.inbound_refused += 1
        close_counted(rt.stats, INBOUND, sock)
        return
    serve_guarded(rt.stats, INBOUND, sock, dst, lambda: _serve_inner(rt, sock, dst))



def _remora_hello(data: bytes) -> bool | None:
    """True: a ClientHello offering remora ALPN; False: something else; None: need more."""
    kind = detect.classify(data)
    if kind is None:
        return None
    if kind != detect.TLS:
        return False
    alpns = client_hello_alpns(data)
    if alpns is None:
        return None if len(data) < detect.PEEK_BYTES else False
    return any(a.startswith(b"remora-") for a in alpns)



async def _serve_inner(rt: ProxyRuntime, sock: socket.socket, dst: tuple[str, int]) -> None:
    mode = rt.config.inbound.mode_for(dst[1])  # type: ignore[union-attr]  # ready: configured
    strict = mode == STRICT
    # Under STRICT the client must speak first (ClientHello); otherwise a server-first
    # protocol must not wait long.
    timeout = HANDSHAKE_TIMEOUT if strict else rt.settings.detect_timeout
    opaque_port = dst[1] in rt.opaque_ports(rt.router)
    data = b""
    if not (mode == DISABLE and opaque_port):
        data = await peek(sock, detect.PEEK_BYTES, timeout, lambda d: _remora_hello(d) is not None)
    remora = bool(data) and _remora_hello(data) is True and mode != DISABLE
    loop = asyncio.get_running_loop()
    if remora:
        tls = rt.tls
        if tls is None:
            close_counted(rt.stats, INBOUND, sock)
            return
        if client_hello_alpns(data) == [ALPN_TCP.encode()]:
            await _tunnel(rt, sock, dst, tls.server)
            return
        try:
            await loop.connect_accepted_socket(
                lambda: InboundTls(rt, dst), sock, ssl=tls.server,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            log.debug("inbound mTLS handshake for port %d failed: %s", dst[1], e)
            rt.stats.connect_error("downstream_tls_handshake")
            rt.stats.conn_closed(INBOUND)
            sock.close()
        return
    if strict:
        rt.stats.inbound_refused += 1
        close_counted(rt.stats, INBOUND, sock)
        return
    kind = detect.OPAQUE if opaque_port else (detect.classify(data) or detect.OPAQUE)
    gate = _gate(rt, _peer_ip(sock), dst, None, client_hello_sni(data))
    if kind == detect.H1:
        ctx = h1_context(rt, dst, None, gate)
        await loop.connect_accepted_socket(lambda: H1Downstream(ctx), sock)
    elif kind == detect.H2 and rt.h2 is not None:
        ctx2 = h2_context(rt, dst, None, gate)
        await loop.connect_accepted_socket(
            lambda: rt.h2.H2Downstream(ctx2), sock)
    else:
        if not authz.check_tcp(gate):
            close_counted(rt.stats, INBOUND, sock)
            return
        try:
            up = await rt.inbound_connector.connect_socket(dst[0], dst[1], 5.0)
        except UpstreamError:
            close_counted(rt.stats, INBOUND, sock)
            return
        tcp = _tcp(rt, _peer_address(sock), dst, None)
        SpliceRelay(sock, up, _closed(rt, tcp), tcp.counts)


async def _tunnel(rt: ProxyRuntime, sock: socket.socket, dst: tuple[str, int],
                  ctx: ssl.SSLContext) -> None:
    """remora-tcp: TLS on memory BIOs (half-close as close_notify), relayed to the app."""
    loop = asyncio.get_running_loop()
    raw, wire = await loop.connect_accepted_socket(
        lambda: TlsWire(ctx, True, HANDSHAKE_TIMEOUT), sock)
    try:
        await wire.handshake
    except (OSError, TimeoutError) as e:
        log.debug("inbound remora-tcp handshake for port %d failed: %s", dst[1], e)
        rt.stats.connect_error("downstream_tls_handshake")
        rt.stats.conn_closed(INBOUND)
        raw.abort()
        return
    rt.stats.handshake("server")
    peer = peer_identity(wire.sslobj)
    if peer is None:
        rt.stats.inbound_refused += 1
        rt.stats.conn_closed(INBOUND)
        raw.abort()
        return
    if not authz.check_tcp(_gate(rt, _peer_ip(sock), dst, peer)):
        rt.stats.conn_closed(INBOUND)
        raw.abort()
        return
    try:
        _, up, _ = await rt.inbound_connector.connect(Endpoint(*dst), "tcp", RelayProtocol, 5.0)
    except UpstreamError:
        rt.stats.conn_closed(INBOUND)
        raw.close()
        return
    tcp = _tcp(rt, _peer_address(sock), dst, peer_identity(wire.sslobj))
    down = RelayProtocol(_closed(rt, tcp))
    count_bytes(down, up, tcp.counts)
    wire.start(down)
    link(down, up)


def _peer_address(sock: socket.socket) -> str | None:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


def _tcp(rt: ProxyRuntime, source: str | None, dst: tuple[str, int],
         peer: str | None) -> TcpTelemetry:
    """Istio's TCP metrics (reporter=destination) and access log of one opaque connection."""
    return TcpTelemetry(rt.stats, rt.labels.inbound(source, dst, peer, TCP), rt.access_log,
                        f"{dst[0]}:{dst[1]}", f"inbound|{dst[1]}||", peer, None)


def _closed(rt: ProxyRuntime, tcp: TcpTelemetry) -> Callable[[], None]:
    def closed() -> None:
        rt.stats.conn_closed(INBOUND)
        tcp.close()
    return closed


def _peer_ip(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""


def _gate(rt: ProxyRuntime, src: str, dst: tuple[str, int], peer: str | None,
          sni: str = "") -> authz.Gate:
    """The connection's attributes for AuthorizationPolicy; the policies are read from the
    current config at each decision, so a push applies to open connections' next request."""
    def policies() -> tuple[AuthzPolicy, ...]:
        cfg = rt.config
        return cfg.inbound.authz if cfg is not None else ()
    return authz.Gate(policies, rt.stats, src, peer, dst, sni)


def h1_context(rt: ProxyRuntime, dst: tuple[str, int], peer: str | None,
               gate: authz.Gate | None = None) -> H1Context:
    return H1Context(INBOUND, rt.inbound_connector, rt.h1_pool, rt.stats, rt.is_draining,
                     inbound_target=dst, peer_identity=peer, local_identity=rt.identity,
                     service=f"inbound|{dst[1]}", registry=rt.http_conns,
                     authorizer=authorizer_for(gate), labels=rt.labels, tracer=rt.tracer,
                     access_log=rt.access_log)


def h2_context(rt: ProxyRuntime, dst: tuple[str, int], peer: str | None,
               gate: authz.Gate | None = None) -> Any:
    return rt.h2.H2Context(router=None, outbound_port=None, inbound_target=dst,
                           connector=rt.inbound_connector, peer_identity=peer,
                           stats=rt.stats, draining=rt.is_draining,
                           pool=rt.h2_pools[INBOUND], registry=rt.http_conns,
                           closed=lambda: rt.stats.conn_closed(INBOUND),
                           local_identity=rt.identity, authorizer=authorizer_for(gate),
                           labels=rt.labels, tracer=rt.tracer, access_log=rt.access_log)


def authorizer_for(gate: authz.Gate | None) -> Authorizer | None:
    """The exchange's authorization hook for one connection: AuthorizationPolicy through
    ``authz.check_http`` at each request head (403 ``RBAC: access denied`` when denied)."""
    if gate is None:
        return None

    def authorize(a: RequestAttrs) -> tuple[int, str] | None:
        if authz.check_http(gate, a.method, a.path, a.authority or None, a.headers):
            return None
        return 403, FORBIDDEN
    return authorize


class InboundTls(asyncio.Protocol):
    """First protocol of a terminated remora mTLS connection: hands over by ALPN."""

    def __init__(self, rt: ProxyRuntime, dst: tuple[str, int]) -> None:
        self.rt = rt
        self.dst = dst

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        rt = self.rt
        rt.stats.handshake("server")
        sslobj = transport.get_extra_info("ssl_object")
        peer = peer_identity(sslobj)
        alpn = sslobj.selected_alpn_protocol() if sslobj else None
        if peer is None:
            rt.stats.inbound_refused += 1
            transport.abort()  # type: ignore[attr-defined]  # a TLS transport
            return
        peername = transport.get_extra_info("peername")
        gate = _gate(rt, str(peername[0]) if peername else "", self.dst, peer)
        if alpn == ALPN_H1:
            p: asyncio.Protocol = H1Downstream(h1_context(rt, self.dst, peer, gate))
        elif alpn == ALPN_H2 and rt.h2 is not None:
            p = rt.h2.H2Downstream(h2_context(rt, self.dst, peer, gate))
        elif alpn in (ALPN_TCP, ALPN_H2) and not authz.check_tcp(gate):
            transport.abort()  # type: ignore[attr-defined]  # a TLS transport
            return
        elif alpn in (ALPN_TCP, ALPN_H2):
            peer_addr = transport.get_extra_info("peername")
            tcp = _tcp(rt, peer_addr[0] if peer_addr else None, self.dst, peer)
            p = RelayProtocol(_closed(rt, tcp))
            asyncio.get_running_loop().create_task(self._relay(p, transport, tcp.counts))
        else:
            rt.stats.protocol_error()
            transport.abort()  # type: ignore[attr-defined]  # a TLS transport
            return
        transport.set_protocol(p)
        p.connection_made(transport)

    async def _relay(self, down: RelayProtocol, transport: asyncio.BaseTransport,
                     counts: list[int]) -> None:
        host, port = self.dst
        try:
            _, up, _ = await self.rt.inbound_connector.connect(
                Endpoint(host, port), "tcp", RelayProtocol, 5.0)
        except UpstreamError:
            transport.close()
            return
        count_bytes(down, up, counts)
        link(down, up)

    def connection_lost(self, exc: Exception | None) -> None:
        self.rt.stats.conn_closed(INBOUND)

    def data_received(self, data: bytes) -> None:  # only before the hand-over, which is at once
        pass
