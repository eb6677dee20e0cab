"""Fire-and-forget request copies (VirtualService ``mirror``), for either codec.

The copy goes in the mirror cluster's own protocol: over HTTP/2 when the primary request
came over HTTP/2 or the mirror cluster's port is ``http2``/``grpc`` (so a gRPC or h2c-only
app can serve it), as a stream on the proxy's outbound HTTP/2 upstream pool (the HTTP/1.1
relay reaches it through its connector; mTLS with ALPN remora-h2 to a meshed endpoint, h2c
otherwise); else over HTTP/1.1 on a connection of its own (remora-h1 to a meshed endpoint).
Its authority gets Istio's "-shadow" suffix, the body is the one buffered for the primary (a
body larger than the replay bound is not mirrored), and its answer is read and discarded.

Each copy is its own task with a short timeout: the primary never waits for it and a failing
mirror never fails it. At most ``MAX_IN_FLIGHT`` copies run at once per proxy; more are
dropped, so a slow or hanging mirror cannot grow memory. Outcomes are counted in
``remora_mirror_requests_total{result}``: answered, failed, dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from control_plane.api.model import GRPC, HTTP2
from sidecar.tls import ALPN_H1, ALPN_H2
from sidecar.traffic.mirror import shadow_authority

from .events import CANCEL, NoStreamAvailable, RequestHead, ResponseHead, StreamGone

if TYPE_CHECKING:
    from control_plane.api.model import Endpoint

    from ..http2 import H2Pool, H2Upstream
    from ..routing import Router

log = logging.getLogger(__name__)
MIRROR_TIMEOUT = 5.0
MAX_IN_FLIGHT = 64  # copies at once per proxy; a copy above this is dropped (counted)
_tasks: set[asyncio.Task[None]] = set()  # strong references until each copy is done
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host",
        b"upgrade", b"te", b"proxy-connection"}


class _Sink(asyncio.Protocol):
    """Reads the mirror's answer until the upstream closes (the copy asks for close)."""

    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()
        self.answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True

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


def h2_head(method: bytes, scheme: bytes, path: bytes, authority: bytes,
            headers: list[tuple[bytes, bytes]], body: bytes) -> RequestHead:
    """The copy's HTTP/2 request head: the shadow authority, hop-by-hop headers dropped
    (``te: trailers`` kept: gRPC needs it), END_STREAM on the head when there is no body."""
    shadow = shadow_authority(authority.decode("latin-1")).encode("latin-1")
    regular = [(k.lower(), v) for k, v in headers if not k.startswith(b":")
               and (k.lower() not in _HOP or (k.lower() == b"te" and v.lower() == b"trailers"))]
    return RequestHead(0, method, scheme or b"http", shadow, path, regular, end_stream=not body)


def send(connector: Any, router: Router, cluster: str, method: bytes, path: bytes,
         authority: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
         h2_pool: H2Pool | None = None) -> None:
    """Start one copy to an endpoint of ``cluster``; returns at once. ``h2_pool``: the
    primary came over HTTP/2 (the copy goes on that relay's pool)."""
    stats = connector.stats
    if len(_tasks) >= MAX_IN_FLIGHT:
        stats.mirror_copy("dropped")
        return
    d = router.pick(cluster)
    if d.endpoint is None or d.cluster is None:
        stats.mirror_copy("failed")
        return
    if h2_pool is not None or d.cluster.protocol in (HTTP2, GRPC):
        try:
            pool = h2_pool if h2_pool is not None else _pool_for(connector)
        except ImportError:  # no HTTP/2 support in this proxy (the runtime said so at start)
            stats.mirror_copy("failed")
            return
        head = h2_head(method, b"http", path, authority, headers, body)
        coro = _send_h2(pool, d.endpoint, head, body)
    else:
        coro = _send_h1(connector, d.endpoint, encode(method, path, authority, headers, body))
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def in_flight() -> int:
    return len(_tasks)


def _pool_for(connector: Any) -> H2Pool:
    """The connector's HTTP/2 pool (the runtime's, for the HTTP/1.1 relay's copies)."""
    pool: H2Pool | None = getattr(connector, "h2_pool", None)
    if pool is None:
        from ..http2 import H2Pool  # http2 imports this module; it registers on the connector

        pool = H2Pool(connector)
    return pool


async def _send_h1(connector: Any, endpoint: Endpoint, data: bytes) -> None:
    answered = False
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            transport, sink, _ = await connector.connect(endpoint, ALPN_H1, _Sink, MIRROR_TIMEOUT)
            try:
                transport.write(data)
                await sink.closed
                answered = sink.answered
            finally:
                transport.close()
    except Exception as e:  # never the primary's problem
        log.debug("mirror to %s:%s failed: %s", endpoint.address, endpoint.port, e)
    connector.stats.mirror_copy("answered" if answered else "failed")


async def _send_h2(pool: H2Pool, endpoint: Endpoint, head: RequestHead, body: bytes) -> None:
    copy: _H2Copy | None = None
    answered = False
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            up = await pool.acquire(endpoint, ALPN_H2 if endpoint.identity else "h2", MIRROR_TIMEOUT)
            copy = _H2Copy(up, body)
            copy.start(head)
            answered = await copy.done
    except Exception as e:  # never the primary's problem
        log.debug("mirror to %s:%s failed: %s", endpoint.address, endpoint.port, e)
    finally:
        if copy is not None:
            copy.abandon()
    pool.connector.stats.mirror_copy("answered" if answered else "failed")


class _H2Copy:
    """One copy on a pooled upstream HTTP/2 connection. To ``H2Upstream`` it is an exchange
    like the relay's (``on_response``, ``side_lost``, ``reset_from``, ``refused``, and itself
    as both pipes: ``push``/``finish`` take the answer, ``flush`` sends the body within the
    stream's flow-control window); the answer's DATA is acknowledged and dropped."""

    def __init__(self, up: H2Upstream, body: bytes) -> None:
        self.up = up
        self.sid: int | None = None
        self.body = body
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.ended = False  # not done.done(): a timeout cancels the future the task awaits
        self.answered = False
        self.resp = self.req = self
        self.resp_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def start(self, head: RequestHead) -> None:
        up = self.up
        try:
            self.sid = up.codec.send_request_head(head)
        except NoStreamAvailable:
            self._end()
            return
        up.streams[self.sid] = self  # type: ignore[assignment]  # duck-typed exchange (above)
        up.touch()
        up.want_send()
        self.flush()

    # -- the request pipe ---------------------------------------------------------------
    def flush(self) -> None:
        up, sid = self.up, self.sid
        if self.ended or sid is None or not self.body:
            return
        try:
            window = up.codec.send_window(sid)
            if window > 0:
                chunk, self.body = self.body[:window], self.body[window:]
                up.codec.send_data(sid, chunk, end_stream=not self.body)
                up.want_send()
        except StreamGone:
            self._end()
            return
        if self.body:
            up.blocked.add(self)  # type: ignore[arg-type]  # resumed on WINDOW_UPDATE
        else:
            up.blocked.discard(self)  # type: ignore[arg-type]

    # -- the response pipe --------------------------------------------------------------
    def push(self, data: bytes, flow: int) -> None:
        self.up.ack(flow, self.sid)

    def finish(self) -> None:
        self._end()

    # -- what H2Upstream calls on an exchange -------------------------------------------
    def on_response(self, head: ResponseHead) -> None:
        if head.status >= 200:
            self.answered = True
        if head.end_stream:
            self._end()

    def side_lost(self, side: Any) -> None:
        self._end()

    def reset_from(self, side: Any, code: int) -> None:
        self._end()

    def refused(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.done.done():
            self.done.set_result(self.answered)
        self.up.blocked.discard(self)  # type: ignore[arg-type]
        if self.sid is not None:
            if self.body:  # answered or reset before the whole body went: stop sending it
                self.up.reset(self.sid, CANCEL)
            self.up.drop(self.sid)

    def abandon(self) -> None:
        """Timed out or cancelled: reset the stream (the mirror may still be working)."""
        if not self.ended:
            if self.sid is not None:
                self.up.reset(self.sid, CANCEL)
            self.body = b""
            self._end()
