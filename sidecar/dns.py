"""The DNS proxy on :15053 (UDP and TCP): mesh names answered here, the rest forwarded.

remora-init redirects the app's port-53 traffic here (the proxy's own, uid 1337, is not
redirected, so forwarding to the pod's original resolvers does not loop). Names from the
proxy's configuration are answered from a ``NameTable`` swapped whole on each config; any
other query is relayed byte for byte to the nameservers of the pod's resolv.conf, read once at
start, one after the other until one answers. Counters are rendered as ``remora_dns_*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import dnswire
from .dnstable import NameTable
from .listeners import bind

log = logging.getLogger("remora.dns")

FORWARD_TIMEOUT = 2.0  # per upstream; a stub resolver itself retries after about 5 s
TCP_IDLE_TIMEOUT = 10.0
LOCAL, FORWARDED, FAILED = "local", "forwarded", "failed"


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


def read_resolv_conf(path: str | Path) -> ResolvConf:
    """Nameservers and search domains of a resolv.conf; a missing file is an empty one."""
    servers: list[str] = []
    search: list[str] = []
    try:
        text = Path(path).read_text()
    except OSError:
        return ResolvConf()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif words and words[0] in ("search", "domain"):
            search = [w.lower().rstrip(".") for w in words[1:]]
    return ResolvConf(tuple(servers), tuple(search))


@dataclass
class DnsStats:
    """Queries by how they were answered, by transport: {(result, protocol): count}."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, result: str, proto: str) -> None:
        key = (result, proto)
        self.counts[key] = self.counts.get(key, 0) + 1

    def render_prometheus(self) -> str:
        lines = ["# TYPE remora_dns_requests_total counter"]
        for result in (LOCAL, FORWARDED, FAILED):
            for proto in ("udp", "tcp"):
                n = self.counts.get((result, proto), 0)
                lines.append(f'remora_dns_requests_total{{result="{result}",protocol="{proto}"}} {n}')
        return "\n".join(lines) + "\n"


class DnsProxy:
    def __init__(self, table: Callable[[], NameTable], upstreams: tuple[str, ...],
                 upstream_port: int = 53, timeout: float = FORWARD_TIMEOUT,
                 unknown: int | None = None) -> None:
        self.table = table
        self.unknown = unknown  # answer names outside the table with this rcode, not forward
        self.upstreams = upstreams
        self.upstream_port = upstream_port
        self.timeout = timeout
        self.stats = DnsStats()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.base_events.Server] = []

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = _udp_socket(host, port)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=sock)
        self._udp.append(transport)
        self._tcp.append(await asyncio.start_server(self._serve_tcp, sock=bind(host, port)))

    def close(self) -> None:
        for t in self._udp:
            t.close()
        for s in self._tcp:
            s.close()

    async def answer(self, data: bytes, proto: str) -> bytes | None:
        """The reply to one query; None drops it (nothing that could be answered)."""
        try:
            query = dnswire.parse_query(data)
        except dnswire.FormatError:
            self.stats.add(FAILED, proto)
            return dnswire.error_for(data)
        if query.opcode == 0:  # a standard query; NOTIFY, UPDATE... go to the real servers
            local = self.table().answer(query.question)
            if local is not None:
                self.stats.add(LOCAL, proto)
                rcode, records = local
                return dnswire.response(query, data, rcode, records,
                                        limit=dnswire.MAX_UDP if proto == "udp" else None)
            if self.unknown is not None:
                self.stats.add(LOCAL, proto)
                return dnswire.response(query, data, self.unknown)
        reply = await self._forward(data, query.id, proto)
        if reply is None:
            self.stats.add(FAILED, proto)
            return dnswire.response(query, data, dnswire.SERVFAIL, authoritative=False)
        self.stats.add(FORWARDED, proto)
        return reply

    async def _forward(self, data: bytes, qid: int, proto: str) -> bytes | None:
        for server in self.upstreams:
            try:
                if proto == "udp":
                    reply = await asyncio.wait_for(self._udp_exchange(server, data, qid),
                                                   self.timeout)
                else:
                    reply = await asyncio.wait_for(self._tcp_exchange(server, data), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("upstream %s: %s", server, e or type(e).__name__)
                continue
            if reply is not None:
                return reply
        return None

    async def _udp_exchange(self, server: str, data: bytes, qid: int) -> bytes | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpClient(done, qid), remote_addr=(server, self.upstream_port))
        try:
            transport.sendto(data)
            return await done
        finally:
            transport.close()

    async def _tcp_exchange(self, server: str, data: bytes) -> bytes | None:
        reader, writer = await asyncio.open_connection(server, self.upstream_port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                data = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE_TIMEOUT)
                reply = await self.answer(data, "tcp")
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)  # keep a reference until done
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.proxy.answer(data, "udp")
        if reply is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(reply, addr)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes], qid: int) -> None:
        self.done = done
        self.qid = qid

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Only the answer to our question; anything else on the port is ignored.
        if len(data) >= 2 and struct.unpack_from("!H", data)[0] == self.qid \
                and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket on ``host``; ``::`` is dual-stack, or IPv4 where the pod has no IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if host == "::" and e.errno in (97, 99):  # no IPv6 in this namespace
            return _udp_socket("0.0.0.0", port)
        raise OSError(e.errno, f"cannot listen on {host}:{port}/udp: {e.strerror}") from None
    sock.setblocking(False)
    return sock


async def serve(table: Callable[[], NameTable], resolv_conf: str, port: int) -> DnsProxy:
    """The DNS proxy on the pod's loopback addresses, where iptables REDIRECT delivers the
    app's queries (so the pod's IP does not offer it to other pods)."""
    conf = read_resolv_conf(resolv_conf)
    if not conf.nameservers:
        log.warning("no nameserver in %s: names outside the mesh will fail (SERVFAIL)",
                    resolv_conf)
    proxy = DnsProxy(table, conf.nameservers)
    await proxy.start("127.0.0.1", port)
    try:
        await proxy.start("::1", port)
    except OSError as e:  # a pod without IPv6
        log.debug("DNS on [::1]:%d not available: %s", port, e)
    log.info("DNS proxy on 127.0.0.1:%d (UDP, TCP); upstream %s", port,
             ", ".join(conf.nameservers) or "none")
    return proxy
