"""Where a redirected connection was going: SO_ORIGINAL_DST after an iptables REDIRECT.

The kernel keeps the pre-NAT destination in conntrack; ``getsockopt`` returns it as a
``sockaddr_in`` (IPv4) or ``sockaddr_in6`` (IPv6), port in network byte order. One syscall per
accepted connection, parsed with precompiled structs.

A connection that reached the listener without a REDIRECT (someone dialled 15001 itself) gives
the listener's own address back, or raises OSError(ENOENT) when conntrack never saw it:
callers must treat "destination is my own listener" as a loop and refuse it.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Protocol

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOL_IPV6 = socket.IPPROTO_IPV6

_SIN = struct.Struct("!2xH4s8x")  # sockaddr_in: family, port, address, padding (16 bytes)
_SIN6 = struct.Struct("!2xH4x16s4x")  # sockaddr_in6: family, port, flowinfo, address, scope id
_inet_ntop = socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


class _Socket(Protocol):  # socket.socket and asyncio's TransportSocket both qualify
    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def original_dst(sock: _Socket) -> tuple[str, int]:
    """The (host, port) the peer dialled before iptables redirected it to this socket.

    IPv6 sockets that accepted an IPv4 connection (dual-stack, ``::ffff:a.b.c.d``) answer
    through the IPv4 option; the host is then returned as plain dotted IPv4.
    """
    if sock.family == _AF_INET6:
        try:
            port, addr = _SIN6.unpack(sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
            return _inet_ntop(_AF_INET6, addr), port
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    port, addr = _SIN.unpack(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16))
    return _inet_ntop(_AF_INET, addr), port
