"""Outbound listener (:15001): what an app connection becomes.

original destination → service port (or passthrough) → protocol (declared opaque, or sniffed
within the detection timeout) → HTTP/1.1 relay, HTTP/2 hand-over, or opaque TCP relay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from control_plane.api.model import GRPC, HTTP, HTTP2, OPAQUE, TLS, OutboundPort

from . import detect
from .conn import close_counted, serve_guarded
from .http1 import H1Context, H1Downstream
from .labels import TCP
from .listeners import peek
from .original_dst import original_dst
from .relay import RelayProtocol, SpliceRelay, count_bytes, link
from .stats import OUTBOUND
from .tcpconn import TcpTelemetry
from .tls import ALPN_TCP
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .runtime import ProxyRuntime

log = logging.getLogger("remora.outbound")


def on_accept(rt: ProxyRuntime, sock: socket.socket) -> None:
    rt.stats.conn_opened(OUTBOUND)
    try:
        dst = original_dst(sock)
    except OSError:
        dst = None
    if dst is None or dst[1] in rt.own_ports and dst[0] in rt.local_addresses(sock):
        # Dialled the proxy itself, not redirected: relaying would loop back here.
        rt.stats.protocol_error()
        close_counted(rt.stats, OUTBOUND, sock)
        return
    serve_guarded(rt.stats, OUTBOUND, sock, dst, lambda: _serve_inner(rt, sock, dst))




async def _serve_inner(rt: ProxyRuntime, sock: socket.socket, dst: tuple[str, int]) -> None:
    router = rt.router
    port = router.lookup(*dst)
    if port is None:
        await _passthrough(rt, sock, dst)
        return
    kind = detect.OPAQUE
    if dst[1] not in rt.opaque_ports(router) and port.protocol not in (OPAQUE, TLS):
        http_only = port.protocol in (HTTP, HTTP2, GRPC)
        data = await peek(sock, detect.PEEK_BYTES, rt.settings.detect_timeout,
                          lambda d: detect.classify(d, http_only) is not None)
        if not data and http_only:
            kind = detect.H1  # nothing sent yet on an HTTP port: let the parser wait
        else:
            kind = detect.classify(data, http_only) or detect.OPAQUE
    loop = asyncio.get_running_loop()
    if kind == detect.H1:
        ctx = H1Context(OUTBOUND, rt.outbound_connector, rt.h1_pool, rt.stats, rt.is_draining,
                        router=router, outbound_port=port, service=port.service,
                        registry=rt.http_conns, local_identity=rt.identity,
                        current_router=lambda: rt.router, original_dst=dst, labels=rt.labels,
                        tracer=rt.tracer, access_log=rt.access_log)
        await loop.connect_accepted_socket(lambda: H1Downstream(ctx), sock)
        return
    if kind == detect.H2 and rt.h2 is not None:
        ctx2 = rt.h2.H2Context(router=router, outbound_port=port, inbound_target=None,
                               connector=rt.outbound_connector, peer_identity=None,
                               stats=rt.stats, draining=rt.is_draining,
                               pool=rt.h2_pools[OUTBOUND], registry=rt.http_conns,
                               closed=lambda: rt.stats.conn_closed(OUTBOUND),
                               current_router=lambda: rt.router, original_dst=dst,
                               labels=rt.labels, tracer=rt.tracer, access_log=rt.access_log)
        await loop.connect_accepted_socket(
            lambda: rt.h2.H2Downstream(ctx2), sock)
        return
    await _opaque(rt, sock, port)


async def _opaque(rt: ProxyRuntime, sock: socket.socket, port: OutboundPort) -> None:
    decision = rt.router.pick(rt.router.tcp_cluster(port))  # VirtualService tcp routes, else the service
    if decision.status:
        rt.stats.connect_error("no_healthy_upstream")
        close_counted(rt.stats, OUTBOUND, sock)
        return
    endpoint, cluster = decision.endpoint, decision.cluster
    assert endpoint is not None and cluster is not None  # no status: the router picked both
    timeout = cluster.connect_timeout
    service = cluster.service
    tcp = TcpTelemetry(rt.stats, rt.labels.outbound(service, endpoint, TCP), rt.access_log,
                       f"{endpoint.address}:{endpoint.port}", f"outbound|{port.port}||{service}",
                       None, endpoint.identity)
    if endpoint.identity is None:
        await _splice_to(rt, sock, endpoint.address, endpoint.port, timeout, tcp)
        return
    try:
        _, up, _ = await rt.outbound_connector.connect(endpoint, ALPN_TCP, RelayProtocol, timeout)
    except UpstreamError as e:
        log.debug("opaque upstream for %s: %s", port.service, e)
        tcp.close()
        close_counted(rt.stats, OUTBOUND, sock)
        return

    def closed() -> None:
        rt.stats.conn_closed(OUTBOUND)
        tcp.close()

    loop = asyncio.get_running_loop()
    _, down = await loop.connect_accepted_socket(lambda: RelayProtocol(closed), sock)
    count_bytes(down, up, tcp.counts)
    link(down, up)


async def _passthrough(rt: ProxyRuntime, sock: socket.socket, dst: tuple[str, int]) -> None:
    rt.stats.passthrough += 1
    await _splice_to(rt, sock, dst[0], dst[1], 5.0)


async def _splice_to(rt: ProxyRuntime, sock: socket.socket, host: str, port: int,
                     timeout: float, tcp: TcpTelemetry | None = None) -> None:
    try:
        up = await rt.outbound_connector.connect_socket(host, port, timeout)
    except UpstreamError as e:
        log.debug("plaintext upstream %s:%d: %s", host, port, e)
        if tcp is not None:
            tcp.close()
        close_counted(rt.stats, OUTBOUND, sock)
        return

    def closed() -> None:
        rt.stats.conn_closed(OUTBOUND)
        if tcp is not None:
            tcp.close()

    SpliceRelay(sock, up, closed, tcp.counts if tcp is not None else None)
