"""Per-connection bookkeeping shared by the inbound and outbound listeners.

Every accepted connection is counted opened at accept and closed exactly once, whatever it
became (refused, spliced, HTTP/1.1, or handed to the HTTP/2 relay), so that the active
connection gauge is right and a drain can tell when the last connection has gone. An HTTP
connection's protocol counts its own close in ``connection_lost`` (H1Downstream through
its context's stats, H2Downstream through its context's ``closed`` hook).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .stats import Stats

P = TypeVar("P", bound=asyncio.BaseProtocol)

log = logging.getLogger("remora.conn")


def close_counted(stats: Stats, direction: str, sock: socket.socket) -> None:
    sock.close()
    stats.conn_closed(direction)


def serve_guarded(stats: Stats, direction: str, sock: socket.socket, dst: tuple[str, int],
                  serve: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve()`` as a task; a bug in it closes (and counts) the connection, not the proxy."""

    async def guarded() -> None:
        try:
            await serve()
        except Exception:
            log.exception("%s connection for %s:%d failed", direction, *dst)
            if sock.fileno() >= 0:
                close_counted(stats, direction, sock)

    asyncio.get_running_loop().create_task(guarded())
