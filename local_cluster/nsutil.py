"""Sockets inside a pod's network namespace, made from the daemon's own thread.

``setns(CLONE_NEWNET)`` switches only the calling thread, and a socket stays in the namespace
it was created in; so the daemon probes pods (and the demo scrapes proxies) without spawning a
process per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import ssl
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in ``netns`` (the calling thread's namespace is restored)."""
    target = os.open(NETNS_RUN / netns, os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


async def open_connection_in(
    netns: str, host: str, port: int, timeout: float, tls: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in(netns, family)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    ctx = None
    if tls:  # probes do not verify certificates, as the kubelet does not
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return await asyncio.wait_for(
        asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=host if tls else None), timeout)


async def http_get_in(
    netns: str, host: str, port: int, path: str, timeout: float = 1.0, tls: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 GET made from inside ``netns``."""
    reader, writer = await open_connection_in(netns, host, port, timeout, tls)
    try:
        hdrs = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/1.29", "Connection": "close",
                **(headers or {})}
        head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        # HTTP/1.0 so that no server answers with a chunked body.
        writer.write(f"GET {path} HTTP/1.0\r\n{head}\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response from {host}:{port}: {status_line[:60]!r}")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(parts[1]), body


async def tcp_check_in(netns: str, host: str, port: int, timeout: float = 1.0) -> None:
    """Raise unless a TCP connection to host:port from inside ``netns`` succeeds."""
    _, writer = await open_connection_in(netns, host, port, timeout)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
