"""Fire-and-forget request copies (VirtualService ``mirror``), for either codec.

The copy goes over HTTP/1.1 (through the mesh's remora-h1 ALPN when the endpoint has a
sidecar) with its authority suffixed "-shadow", the request body as buffered for the
primary (a body larger than the replay bound is not mirrored), and its answer is read and
discarded. It runs as its own task with a short timeout: the primary never waits for it and
a failing mirror never fails the primary.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sidecar.tls import ALPN_H1
from sidecar.traffic.mirror import shadow_authority

if TYPE_CHECKING:
    from ..routing import Router

log = logging.getLogger(__name__)
MIRROR_TIMEOUT = 5.0
_tasks: set[asyncio.Task[None]] = set()  # strong references until each copy is done
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host",
        b"upgrade", b"te", b"proxy-connection"}


class _Sink(asyncio.Protocol):
    """Reads the mirror's answer until the upstream closes (the copy asks for close)."""

    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def encode(method: bytes, path: bytes, authority: bytes, headers: list[tuple[bytes, bytes]],
           body: bytes) -> bytes:
    """The copy as one HTTP/1.1 request (pseudo-headers and hop-by-hop headers dropped)."""
    shadow = shadow_authority(authority.decode("latin-1")).encode("latin-1")
    out = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, path, shadow)]
    out += [b"%s: %s\r\n" % (k, v) for k, v in headers if not k.startswith(b":") and k.lower() not in _HOP]
    out.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(out) + body


def send(connector: Any, router: Router, cluster: str, method: bytes, path: bytes,
         authority: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Start one copy to an endpoint of ``cluster``; returns at once."""
    d = router.pick(cluster)
    if d.endpoint is None:
        return
    data = encode(method, path, authority, headers, body)
    task = asyncio.get_running_loop().create_task(_send(connector, d.endpoint, data))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _send(connector: Any, endpoint: Any, data: bytes) -> None:
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            transport, sink, _ = await connector.connect(endpoint, ALPN_H1, _Sink, MIRROR_TIMEOUT)
            try:
                transport.write(data)
                await sink.closed
            finally:
                transport.close()
    except Exception as e:  # never the primary's problem
        log.debug("mirror to %s:%s failed: %s", endpoint.address, endpoint.port, e)
