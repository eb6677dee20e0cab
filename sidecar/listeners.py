"""Listening sockets with a hand-written accept loop.

The proxy accepts raw sockets itself (instead of ``loop.create_server``) so that it can read
SO_ORIGINAL_DST and peek at the first bytes before deciding what the connection becomes: an
HTTP/1.1 or HTTP/2 protocol (``loop.connect_accepted_socket``, with TLS on the inbound side),
or a kernel-side splice relay that never creates a transport at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from .fdlimit import ACCEPT_BACKOFF, EXHAUSTED

log = logging.getLogger("remora.listener")


def bind(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening socket; ``host`` "::" means dual-stack (falls back to 0.0.0.0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        if host != "::":
            raise
        host, sock = "0.0.0.0", socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if host == "::" and e.errno in (97, 99):  # no IPv6 in this namespace
            return bind("0.0.0.0", port, backlog)
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


class Listener:
    """Accepts connections on ``sock`` and hands each to ``on_accept(conn)``."""

    def __init__(self, name: str, sock: socket.socket, on_accept: Callable[[socket.socket], None],
                 on_exhausted: Callable[[str], None] | None = None):
        self.name = name
        self.sock = sock
        self.on_accept = on_accept
        self.on_exhausted = on_exhausted  # counts each back-off (a metric)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._accept)
        self._paused: asyncio.TimerHandle | None = None
        self._last_log = 0.0
        self._unlogged = 0

    def _accept(self) -> None:
        for _ in range(64):  # bounded batch so one busy listener cannot starve the loop
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in EXHAUSTED:
                    self._back_off(e)
                else:
                    log.warning("%s: accept failed: %s", self.name, e)
                return
            conn.setblocking(False)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.on_accept(conn)
            except Exception:
                log.exception("%s: handling a new connection failed", self.name)
                conn.close()

    def _back_off(self, err: OSError) -> None:
        """Out of descriptors: stop watching the socket for a moment. It stays readable while
        connections wait in the backlog, so retrying at once would spin the CPU and the log."""
        if self.on_exhausted is not None:
            self.on_exhausted(self.name)
        now = time.monotonic()
        self._unlogged += 1
        if now - self._last_log >= 1.0:
            log.warning("%s: accept failed: %s; pausing accepts %.0f ms (%d times since the last "
                        "message)", self.name, err.strerror, ACCEPT_BACKOFF * 1000, self._unlogged)
            self._last_log, self._unlogged = now, 0
        if self._paused is None and self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self._paused = self.loop.call_later(ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            with contextlib.suppress(OSError):
                self.sock.close()


async def peek(sock: socket.socket, want: int, timeout: float,
               enough: Callable[[bytes], bool]) -> bytes:
    """Peek up to ``want`` bytes until ``enough(data)`` holds, EOF, or ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data = b""
    while True:
        try:
            data = sock.recv(want, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return data
        else:
            if not data or enough(data):
                return data
        left = deadline - loop.time()
        if left <= 0:
            return data
        if data:
            # Some bytes but not enough: the socket stays readable, so poll instead of waiting.
            await asyncio.sleep(min(0.005, left))
            continue
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _wake, fut)
        try:
            await asyncio.wait_for(fut, left)
        except TimeoutError:
            return data
        finally:
            loop.remove_reader(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
