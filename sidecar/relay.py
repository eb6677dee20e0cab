"""Opaque TCP: a byte relay between two connections.

Two forms. ``SpliceRelay`` moves bytes kernel-side with ``os.splice`` through a pipe when
neither side is TLS (no copy into Python). ``RelayProtocol`` pairs two asyncio transports
when one side is TLS. Both hold at most one read's worth of bytes per direction: when the
destination cannot take more, reading from the source stops (backpressure).

Half-close: a FIN from one side becomes ``shutdown(SHUT_WR)`` on the other, and the other
direction keeps flowing. TLS cannot be half-closed through Python's ssl transports, so a FIN
towards a TLS side closes that TLS connection after its buffered bytes are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from .stats import TCP_RECEIVED, TCP_SENT

CHUNK = 65536
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class _Direction:
    __slots__ = ("src", "dst", "pipe_r", "pipe_w", "pending", "eof", "done", "counter")

    def __init__(self, src: socket.socket, dst: socket.socket, counter: int) -> None:
        self.src, self.dst = src, dst
        self.counter = counter  # index into the relay's byte counters
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending = 0  # bytes in the pipe not yet written to dst
        self.eof = False
        self.done = False


class SpliceRelay:
    """Relay two plain non-blocking sockets until both directions end; then ``on_close``.

    ``counts`` (a connection's counts, see Stats.tcp_open) gets the bytes read from ``a`` added at
    [TCP_RECEIVED] and those read from ``b`` at [TCP_SENT] (``a`` is the downstream)."""

    def __init__(
        self, a: socket.socket, b: socket.socket, on_close: Callable[[], None] | None = None,
        counts: list[int] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_close = on_close
        self.closed = False
        self.counts = counts if counts is not None else [0, 0, 0, 0]
        self.dirs = (_Direction(a, b, TCP_RECEIVED), _Direction(b, a, TCP_SENT))
        for d in self.dirs:
            self.loop.add_reader(d.src.fileno(), self._readable, d)

    def _readable(self, d: _Direction) -> None:
        try:
            n = os.splice(d.src.fileno(), d.pipe_w, CHUNK, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if n == 0:
            d.eof = True
            self.loop.remove_reader(d.src.fileno())
        else:
            d.pending += n
            self.counts[d.counter] += n
        self._flush(d)

    def _flush(self, d: _Direction) -> None:
        while d.pending:
            try:
                n = os.splice(d.pipe_r, d.dst.fileno(), d.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                n = -1
            except OSError:
                self.close()
                return
            if n <= 0:
                # Destination full: stop reading the source until it drains (backpressure).
                self.loop.remove_reader(d.src.fileno())
                self.loop.add_writer(d.dst.fileno(), self._writable, d)
                return
            d.pending -= n
        if d.eof:
            d.done = True
            with contextlib.suppress(OSError):
                d.dst.shutdown(socket.SHUT_WR)
            if all(x.done for x in self.dirs):
                self.close()

    def _writable(self, d: _Direction) -> None:
        self.loop.remove_writer(d.dst.fileno())
        self._flush(d)
        if not d.pending and not d.eof and not self.closed:
            self.loop.add_reader(d.src.fileno(), self._readable, d)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for d in self.dirs:
            for fd in (d.src.fileno(), d.dst.fileno()):
                if fd >= 0:
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
            os.close(d.pipe_r)
            os.close(d.pipe_w)
        for s in (self.dirs[0].src, self.dirs[0].dst):
            s.close()
        if self.on_close:
            self.on_close()


class RelayProtocol(asyncio.Protocol):
    """One side of a transport-to-transport relay; ``link`` two of them.

    A plain ``Protocol``: reading the plaintext side into a shared buffer (``BufferedProtocol``)
    instead measured about 10 % more CPU per GB on the encrypting proxy (docs/proxy.md)."""

    __slots__ = ("transport", "peer", "buffer", "eof", "closed", "on_close", "counts", "counter")

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        # None until connection_made; typed as set, since every use comes after it.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # Telemetry: bytes this side reads are added to counts[counter] (see count_bytes).
        self.counts: list[int] | None = None
        self.counter = 0
        self.peer: RelayProtocol | None = None
        self.buffer: list[bytes] = []  # bytes that arrived before the peer was linked
        self.eof = False
        self.closed = False
        self.on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes read from this side go to the peer; a TlsWire passes a view of its buffer,
        valid during the call only."""
        if self.counts is not None:
            self.counts[self.counter] += len(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            self.buffer.append(bytes(data))
            self.transport.pause_reading()  # one read at most until linked
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            return True
        return self._forward_eof(peer)

    def _forward_eof(self, peer: RelayProtocol) -> bool:
        pt = peer.transport
        if peer.eof or not pt.can_write_eof():
            pt.close()
            return False
        pt.write_eof()
        return True  # keep our write side open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        if self.on_close:
            self.on_close()
            self.on_close = None

    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport and not self.peer.closed:
            self.peer.transport.resume_reading()


def count_bytes(down: RelayProtocol, up: RelayProtocol, counts: list[int]) -> None:
    """Count a relay's bytes into a connection's counts; bytes read before this are added too."""
    for side, counter in ((down, TCP_RECEIVED), (up, TCP_SENT)):
        side.counts, side.counter = counts, counter
        counts[counter] += sum(map(len, side.buffer))


def link(a: RelayProtocol, b: RelayProtocol) -> None:
    """Start relaying between two connected sides; flush what either read before."""
    a.peer, b.peer = b, a
    for src, dst in ((a, b), (b, a)):
        if src.closed:
            if not dst.closed:
                dst.transport.close()
            continue
        for chunk in src.buffer:
            dst.transport.write(chunk)
        src.buffer.clear()
        if src.eof:
            src._forward_eof(dst)
        elif not src.closed:
            src.transport.resume_reading()
