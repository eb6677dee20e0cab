"""Opening upstream connections: mTLS to a peer sidecar, plaintext to an app or unmeshed host.

``Connector.connect`` is the one way the HTTP/1.1, HTTP/2 and TCP code reach an upstream.
It checks, after the handshake, that the peer presents the SPIFFE identity the control plane
expects for that endpoint and that it accepted our ALPN value; otherwise the connection is
closed, counted and reported as ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from control_plane.api.model import Cluster, Endpoint

from .http import limits as limits_
from .stats import Stats
from .tls import ALPN_TCP, REMORA_ALPNS, TlsContexts, peer_identity
from .tlsbio import TlsWire

P = TypeVar("P", bound=asyncio.BaseProtocol)

IPV6_FREEBIND = 78  # linux/in6.h


class UpstreamError(Exception):
    """Connecting upstream failed; ``reason`` is a short counter label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def source_for(address: str, source: str | None) -> tuple[str, int] | None:
    """Bind address for the inbound hop (127.0.0.6, or ::6 when the target is IPv6)."""
    if source is None:
        return None
    return ("::6" if ":" in address else source, 0)


class Connector:
    """Makes upstream connections; one instance for outbound, one (bound to 127.0.0.6) inbound."""

    def __init__(
        self,
        tls: Callable[[], TlsContexts | None],
        stats: Stats,
        source_address: str | None = None,
    ) -> None:
        self._tls = tls
        self.stats = stats
        self.source_address = source_address
        # The HTTP/2 upstream pool on this connector (sidecar/http2.H2Pool; the first one made
        # registers itself): mirror copies the HTTP/1.1 relay sends over HTTP/2 use it too.
        self.h2_pool: Any = None

    async def connect(
        self,
        endpoint: Endpoint,
        alpn: str,
        protocol_factory: Callable[[], P],
        timeout: float = 5.0,
    ) -> tuple[asyncio.Transport, P, str | None]:
        """(transport, protocol, peer identity). mTLS when ``alpn`` is a remora-* value and
        the endpoint has an identity; plaintext otherwise. Raises UpstreamError."""
        loop = asyncio.get_running_loop()
        secure = alpn in REMORA_ALPNS and endpoint.identity is not None
        ctx: ssl.SSLContext | None = None
        if secure:
            tls = self._tls()
            if tls is None:
                self.stats.connect_error("no_certificate")
                raise UpstreamError("no_certificate", "no workload certificate loaded yet")
            ctx = tls.clients[alpn]
        if secure and alpn == ALPN_TCP:
            return await self._connect_tunnel(endpoint, ctx, protocol_factory, timeout)  # type: ignore[arg-type]  # secure: ctx is set
        try:
            where: dict[str, Any]
            if self.source_address is None:
                where = {"host": endpoint.address, "port": endpoint.port}
            else:  # the inbound hop: bound to 127.0.0.6 / ::6 before connecting
                where = {"sock": await self.connect_socket(endpoint.address, endpoint.port, timeout)}
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    protocol_factory, **where, ssl=ctx, server_hostname="" if ctx else None,
                    ssl_handshake_timeout=timeout if ctx else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise self._fail("connect_timeout", f"connect to {endpoint.address}:{endpoint.port} "
                                                f"timed out after {timeout}s") from None
        except ssl.SSLError as e:
            raise self._fail("tls_handshake", f"TLS handshake with {endpoint.address}:"
                                              f"{endpoint.port} failed: {e.reason}") from None
        except OSError as e:
            reason = "connect_refused" if e.errno == errno.ECONNREFUSED else "connect_error"
            raise self._fail(reason, f"connect to {endpoint.address}:{endpoint.port}: "
                                     f"{e.strerror or e}") from None
        _nodelay(transport)
        if not secure:
            return transport, protocol, None
        peer = self._check_peer(endpoint, alpn, transport.get_extra_info("ssl_object"), transport)
        return transport, protocol, peer

    def _check_peer(self, endpoint: Endpoint, alpn: str, sslobj: Any,
                    transport: asyncio.Transport) -> str | None:
        """The peer's identity, if it is the expected one and it took our ALPN; else abort."""
        self.stats.handshake("client")
        peer = peer_identity(sslobj)
        if peer != endpoint.identity:
            transport.abort()
            raise self._fail("identity_mismatch", f"{endpoint.address}:{endpoint.port} presented "
                                                  f"{peer or 'no identity'}, expected {endpoint.identity}")
        if sslobj.selected_alpn_protocol() != alpn:
            transport.abort()
            raise self._fail("alpn_mismatch", f"{endpoint.address}:{endpoint.port} did not accept "
                                              f"ALPN {alpn}")
        return peer

    async def _connect_tunnel(self, endpoint: Endpoint, ctx: ssl.SSLContext,
                              protocol_factory: Callable[[], P],
                              timeout: float) -> tuple[asyncio.Transport, P, str | None]:
        """remora-tcp: TLS on memory BIOs so that a FIN can cross as close_notify."""
        loop = asyncio.get_running_loop()
        where = f"{endpoint.address}:{endpoint.port}"
        try:
            raw, wire = await asyncio.wait_for(loop.create_connection(
                lambda: TlsWire(ctx, False, timeout), endpoint.address, endpoint.port), timeout)
        except TimeoutError:
            raise self._fail("connect_timeout", f"connect to {where} timed out") from None
        except OSError as e:
            reason = "connect_refused" if e.errno == errno.ECONNREFUSED else "connect_error"
            raise self._fail(reason, f"connect to {where}: {e.strerror or e}") from None
        _nodelay(raw)
        try:
            await wire.handshake
        except ssl.SSLError as e:
            raise self._fail("tls_handshake", f"TLS handshake with {where} failed: {e.reason}") from None
        except (OSError, TimeoutError) as e:
            raw.abort()
            raise self._fail("tls_handshake", f"TLS handshake with {where} failed: {e}") from None
        peer = self._check_peer(endpoint, ALPN_TCP, wire.sslobj, raw)
        protocol = protocol_factory()
        return wire.start(protocol), protocol, peer  # type: ignore[arg-type]  # an asyncio.Protocol

    def _fail(self, reason: str, message: str) -> UpstreamError:
        self.stats.connect_error(reason)
        return UpstreamError(reason, message)

    async def connect_socket(self, address: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A plain connected non-blocking socket (for the splice relay). Raises UpstreamError."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            src = source_for(address, self.source_address)
            if src:
                if family == socket.AF_INET6:
                    # ::6 is not configured on lo (unlike all of 127/8): bind it anyway.
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                sock.bind(src)
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
        except TimeoutError:
            sock.close()
            raise self._fail("connect_timeout", f"connect to {address}:{port} timed out") from None
        except OSError as e:
            sock.close()
            reason = "connect_refused" if e.errno == errno.ECONNREFUSED else "connect_error"
            raise self._fail(reason, f"connect to {address}:{port}: {e.strerror or e}") from None
        except BaseException:
            sock.close()
            raise
        return sock


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pool_idle_timeout(cluster: Cluster | None) -> float:
    """How long a pooled upstream connection may stay unused: the cluster's DestinationRule
    ``connectionPool.http.idleTimeout`` when set, else the proxy-wide ``upstreamIdleTimeout``
    (limits; 0: kept until the upstream closes it). Both pools (HTTP/1.1, HTTP/2) ask here."""
    if cluster is not None:
        idle = cluster.policy.connection_pool.idle_timeout
        if idle is not None:
            return idle
    return limits_.current().upstream_idle_timeout
