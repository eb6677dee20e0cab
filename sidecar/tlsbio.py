"""TLS over an ``ssl.MemoryBIO`` pair, for the opaque ``remora-tcp`` tunnel.

asyncio's (and uvloop's) TLS transports cannot half-close: ``write_eof`` raises. TLS 1.3 can
(a ``close_notify`` ends one direction; the other keeps flowing), and ``SSLObject`` allows
reading after ``unwrap()`` sent ours. Opaque TCP needs that to carry a FIN across the mesh
(a client that shuts down its sending side and waits for the answer), so the remora-tcp hop
runs TLS here: ``TlsWire`` is the protocol on the plain TCP transport; once the handshake is
done and the caller has checked the peer, ``start`` gives the app protocol a ``TlsTransport``
that encrypts on write and sends ``close_notify`` on ``write_eof``.

Per read, not per TLS record: the wire feeds the incoming BIO once per read and decrypts
every complete record into one process-wide buffer (``rxbuf.py``), handed to the app
protocol once (one write on the other side instead of one per 16 KiB record). The wire is a
plain ``Protocol``: uvloop's ``BufferedProtocol`` path measured 6-11 % more CPU per GB for
the proxy pair (docs/proxy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

from .relay import RelayProtocol
from .rxbuf import SharedBuffer

_PLAIN_OUT = SharedBuffer()  # decrypted bytes, until the app protocol has taken them


class TlsTransport(asyncio.Transport):
    """The decrypted side of a ``TlsWire``, as the app protocol sees it."""

    def __init__(self, wire: TlsWire) -> None:
        super().__init__()
        self._wire = wire
        self._eof_sent = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        w = self._wire
        if self._eof_sent or w.raw.is_closing():
            return
        w.sslobj.write(data)
        w.flush()

    def writelines(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(parts))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send close_notify: the peer reads EOF; we keep reading its remaining bytes."""
        if self._eof_sent:
            return
        self._eof_sent = True
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError, ValueError):
            self._wire.sslobj.unwrap()
        self._wire.flush()

    def close(self) -> None:
        self.write_eof()
        self._wire.raw.close()

    def abort(self) -> None:
        self._wire.raw.abort()

    def is_closing(self) -> bool:
        return self._wire.raw.is_closing()

    def pause_reading(self) -> None:
        self._wire.reading = False
        self._wire.raw.pause_reading()

    def resume_reading(self) -> None:
        w = self._wire
        if not w.reading and not w.raw.is_closing():
            w.reading = True
            w.raw.resume_reading()
            w.read_app_data()  # records decrypted while paused may already be buffered

    def is_reading(self) -> bool:
        return self._wire.reading

    def get_write_buffer_size(self) -> int:
        return self._wire.raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._wire.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._wire.sslobj
        if name == "peercert":
            return self._wire.sslobj.getpeercert()
        return self._wire.raw.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._wire.app = protocol  # type: ignore[assignment]  # always a RelayProtocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._wire.app  # type: ignore[return-value]  # set by start() before use


class TlsWire(asyncio.Protocol):
    """Protocol on the plain TCP transport: handshake, then decrypt into the app protocol."""

    def __init__(self, context: ssl.SSLContext, server_side: bool, handshake_timeout: float) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                       server_hostname=None)
        self.raw: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.app: RelayProtocol | None = None  # the one app: it takes views (data_received)
        self.transport = TlsTransport(self)
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.reading = True
        self.peer_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out)
        self._do_handshake()

    def _timed_out(self) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(TimeoutError("TLS handshake timed out"))
            self.raw.abort()

    def _do_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as e:
            self.flush()  # the alert
            if not self.handshake.done():
                self.handshake.set_exception(e)
            self.raw.abort()
            return
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
        if self.app is None:
            self.raw.pause_reading()  # nothing reads decrypted bytes until start()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def start(self, app: RelayProtocol) -> TlsTransport:
        """Hand the decrypted stream to ``app`` (after the caller checked the peer)."""
        self.app = app
        app.connection_made(self.transport)
        if self.reading:
            self.raw.resume_reading()
        self.read_app_data()
        return self.transport

    def flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshake.done():
            self._do_handshake()
        if self.app is not None:
            self.read_app_data()

    def read_app_data(self) -> None:
        """Decrypt what the incoming BIO holds and hand it to the app, one chunk per call."""
        app = self.app
        sslobj = self.sslobj
        while self.reading and not self.peer_eof and app is not None:
            out = _PLAIN_OUT.get()
            size = len(out)
            n = 0
            eof = failed = False
            with memoryview(out) as mv:
                while n < size:
                    try:
                        # into a buffer, read returns a count (typeshed knows only bytes)
                        got: int = sslobj.read(size - n, mv[n:])  # type: ignore[arg-type,assignment]
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        got = 0
                    except ssl.SSLError:
                        failed = True  # after what was decrypted before it
                        break
                    if not got:  # the peer's close_notify: EOF of its direction only
                        eof = True
                        break
                    n += got
                if n:
                    app.data_received(mv[:n])  # a view, valid during the call only
            if n:
                _PLAIN_OUT.reclaim()
            if failed:
                self.raw.abort()
                return
            if eof:
                self.peer_eof = True
                self.flush()
                if not app.eof_received():
                    self.transport.close()
                return
            if n < size:
                break  # the BIO holds no complete record
        self.flush()  # reading may produce output (key updates, tickets)

    def eof_received(self) -> bool:
        # A TCP FIN without close_notify: treat as EOF if the handshake was done.
        if self.app is not None and not self.peer_eof:
            self.peer_eof = True
            return bool(self.app.eof_received())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during TLS handshake"))
        if self.app is not None:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()
