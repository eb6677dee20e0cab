"""HTTP/2 relay of the sidecar: one h2 server per downstream connection, pooled h2 clients upstream.

Each downstream stream is paired with one stream on a pooled upstream connection (an
``_Exchange``). Bytes move through two ``_Pipe`` objects (request: downstream → upstream,
response: upstream → downstream). A pipe acknowledges received DATA to its source only once
the bytes were handed to the destination connection within the destination's flow-control
window, so a slow reader stalls the sender through HTTP/2 flow control instead of growing a
buffer here. What a pipe holds is therefore bounded by the window we advertised to its source.
When a transport's write buffer passes its high-water mark the side stops reading from that
peer and stops moving DATA into it until the buffer drains (pause_reading/resume_reading).

h2's connection state machine refuses every frame after a GOAWAY was sent or received; a
graceful GOAWAY (in-flight streams finish) needs the state kept open, see ``_Connection``.
See docs/http2.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from control_plane.api.model import Endpoint
from sidecar.accesslog import AccessLog
from sidecar.labels import GRPC as PROTO_GRPC
from sidecar.labels import HTTP as PROTO_HTTP
from sidecar.labels import Labeler
from sidecar.stats import NO_FLAGS
from sidecar.tracing import CLIENT, SERVER, Tracer, h2_rewrite

if TYPE_CHECKING:
    from control_plane.api.model import OutboundPort
    from sidecar.routing import Router
    from sidecar.stats import Stats
    from sidecar.upstream import Connector

log = logging.getLogger("remora.http2")

STREAM_WINDOW = 65_535  # per-stream receive window we advertise (the HTTP/2 default)
CONN_WINDOW = 1 << 21  # connection receive window: a few stalled streams do not block the rest
MAX_STREAMS = 128  # concurrent streams we accept per downstream connection
HIGH_WATER = 256 * 1024  # transport write buffer: stop reading that peer above this
LOW_WATER = 64 * 1024
CONNECT_TIMEOUT = 5.0  # when the cluster does not say (inbound hop to the app)
IDLE_TIMEOUT = 60.0  # an upstream connection without streams is closed after this
DRAIN_POLL = 0.5  # seconds between checks of ctx.draining() for idle downstream connections

# Connection-specific headers (RFC 9113 8.2.2); "te" is kept only as "te: trailers".
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
     b"http2-settings")
)
GRPC_UNAVAILABLE = b"14"
GRPC_DEADLINE_EXCEEDED = b"4"
# (address, port, ALPN, expected identity): a reused pod IP never gets a connection that was
# verified for the workload that had it before.
PoolKey = tuple[str, int, str, str | None]
STREAM_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError)


@dataclass
class H2Context:
    """What the proxy core hands to one downstream HTTP/2 connection."""

    router: Router | None  # outbound: resolves each request
    outbound_port: OutboundPort | None  # outbound: the service port the app connected to
    inbound_target: tuple[str, int] | None  # inbound: the app's address (plaintext h2 hop)
    connector: Connector
    peer_identity: str | None  # downstream peer's SPIFFE ID (inbound mTLS), else None
    stats: Stats
    draining: Callable[[], bool]
    labels: Labeler | None = None  # Istio metric labels (None: only the remora_* series)
    tracer: Tracer | None = None  # None: tracing off, trace headers pass through untouched
    access_log: AccessLog | None = None  # None: access logs off


def _config(client_side: bool) -> h2.config.H2Configuration:
    # Headers stay bytes end to end; inbound validation guards us, outbound would re-check
    # what we just validated (or copied from a validated peer) at a CPU cost.
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


def _settings(client_side: bool) -> h2.settings.Settings:
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
    }
    if client_side:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    return h2.settings.Settings(client=client_side, initial_values=values)


class _Connection(h2.connection.H2Connection):
    """h2 with graceful GOAWAY both ways (RFC 9113 6.8: streams up to last-stream-id finish).

    Stock h2 (4.x) moves to CLOSED on any GOAWAY, rejects every later frame (even a PING in
    the same read) and drops its unsent output. Here the state and the output survive a
    NO_ERROR GOAWAY; new streams are refused by the relay's own bookkeeping instead.
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state, unsent = self.state_machine.state, self._data_to_send
        result = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            self.state_machine.state, self._data_to_send = state, unsent
        return result

    def send_goaway(self, last_stream_id: int) -> None:
        state = self.state_machine.state
        self.close_connection(ErrorCodes.NO_ERROR, last_stream_id=last_stream_id)
        self.state_machine.state = state


class _Side(asyncio.Protocol):
    """One h2 connection (either end) and the streams of it that are paired with the other end."""

    client_side = False

    def __init__(self) -> None:
        self.h2 = _Connection(_config(self.client_side))
        self.h2.local_settings = _settings(self.client_side)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Exchange] = {}
        self.blocked: set[_Pipe] = set()  # pipes into this side waiting for window/writability
        self.write_paused = False
        self.closed = False
        self.goaway_received = False
        self._send_scheduled = False

    # -- transport plumbing -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONN_WINDOW - 65_535)
        self.send_now()

    def want_send(self) -> None:
        """Write h2's output soon: one write per event-loop turn instead of one per frame."""
        if not self._send_scheduled and not self.closed:
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self.send_now)

    def send_now(self) -> None:
        self._send_scheduled = False
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def pause_writing(self) -> None:
        # The peer is not reading what we send: stop reading it (its frames make us write, e.g.
        # PING and SETTINGS acks) and stop moving DATA into it; pipes keep their sources waiting.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self.flush_blocked()

    def flush_blocked(self) -> None:
        for pipe in list(self.blocked):
            pipe.flush()

    def close(self) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.send_now()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.protocol_error(e)
            return
        try:
            for ev in events:
                handler = self._handlers.get(type(ev))
                if handler is not None:
                    handler(self, ev)
        except Exception:  # a relay bug must cost this connection, not the proxy's loop
            log.exception("%s: HTTP/2 relay failure; closing the connection", type(self).__name__)
            self.close()
            return
        self.want_send()

    def protocol_error(self, err: Exception) -> None:
        log.info("%s: HTTP/2 protocol error: %s", type(self).__name__, err)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.blocked.clear()
        for ex in list(self.streams.values()):
            ex.side_lost(self)
        self.streams.clear()

    # -- events common to both ends -----------------------------------------------------
    def in_pipe(self, ex: _Exchange) -> _Pipe:
        raise NotImplementedError

    def out_pipe(self, ex: _Exchange) -> _Pipe:
        raise NotImplementedError

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is None:  # stream already torn down: give the window back and drop the bytes
            self.ack(ev.flow_controlled_length, ev.stream_id)
            return
        if self.client_side:  # telemetry: body bytes (an upstream sends the response)
            ex.resp_bytes += len(ev.data)
        else:
            ex.req_bytes += len(ev.data)
        self.in_pipe(ex).push(ev.data, ev.flow_controlled_length)

    def _on_trailers(self, ev: h2.events.TrailersReceived) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            self.in_pipe(ex).trailers = _filter(ev.headers)

    def _on_ended(self, ev: h2.events.StreamEnded) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            self.in_pipe(ex).finish()

    def _on_reset(self, ev: h2.events.StreamReset) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            ex.reset_from(self, ev.error_code)

    def _on_window(self, ev: h2.events.WindowUpdated) -> None:
        if ev.stream_id == 0:
            self.flush_blocked()
            return
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            self.out_pipe(ex).flush()

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged) -> None:
        self.flush_blocked()  # INITIAL_WINDOW_SIZE may have grown every stream's window

    def ack(self, n: int, stream_id: int) -> None:
        if n and not self.closed:
            with contextlib.suppress(*STREAM_GONE):
                self.h2.acknowledge_received_data(n, stream_id)
            self.want_send()

    def reset(self, stream_id: int | None, code: int) -> None:
        if stream_id is None or self.closed:
            return
        with contextlib.suppress(*STREAM_GONE):
            self.h2.reset_stream(stream_id, code)
        self.want_send()

    def drop(self, stream_id: int | None) -> None:
        """Forget a finished exchange; subclasses close an idle connection as they see fit."""
        if stream_id is not None:
            self.streams.pop(stream_id, None)

    _handlers: dict[type, Callable[[Any, Any], None]] = {
        h2.events.DataReceived: _on_data,
        h2.events.TrailersReceived: _on_trailers,
        h2.events.StreamEnded: _on_ended,
        h2.events.StreamReset: _on_reset,
        h2.events.WindowUpdated: _on_window,
        h2.events.RemoteSettingsChanged: _on_settings,
    }


def _filter(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop connection-specific headers; keep ``te: trailers`` (gRPC needs it)."""
    out = []
    for name, value in headers:
        if name in HOP_BY_HOP or (name == b"te" and value.strip().lower() != b"trailers"):
            continue
        out.append((name, value))
    return out


class _Pipe:
    """One direction of an exchange: DATA and trailers from ``src`` stream to ``dst`` stream."""

    __slots__ = ("ex", "src", "src_sid", "dst", "dst_sid", "queue", "ended", "trailers",
                 "sent_end", "closed")

    def __init__(self, ex: _Exchange, src: _Side | None, src_sid: int | None) -> None:
        self.ex = ex
        self.src = src
        self.src_sid = src_sid
        self.dst: _Side | None = None
        self.dst_sid: int | None = None
        # [data, flow-controlled length not yet acknowledged to src]; bounded by src's window.
        self.queue: deque[list[Any]] = deque()
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.sent_end = False
        self.closed = False

    def push(self, data: bytes, flow_len: int) -> None:
        if self.closed:
            self.src.ack(flow_len, self.src_sid)
            return
        self.queue.append([data, flow_len])
        self.flush()

    def finish(self) -> None:
        self.ended = True
        self.flush()

    def flush(self) -> None:
        dst = self.dst
        if dst is None or self.closed or self.sent_end:
            return
        if dst.write_paused or dst.closed:
            dst.blocked.add(self)
            return
        conn = dst.h2
        sid = self.dst_sid
        queue = self.queue
        acked = 0
        try:
            while queue:
                item = queue[0]
                data = item[0]
                if data:
                    window = conn.local_flow_control_window(sid)
                    if window <= 0:
                        break
                    n = min(len(data), window, conn.max_outbound_frame_size)
                    if n < len(data):
                        conn.send_data(sid, data[:n])
                        item[0] = data[n:]
                        item[1] -= n
                        acked += n
                        continue
                    conn.send_data(sid, data)
                queue.popleft()
                acked += item[1]
            if queue:
                dst.blocked.add(self)
            else:
                dst.blocked.discard(self)
                if self.ended:
                    if self.trailers:
                        conn.send_headers(sid, self.trailers, end_stream=True)
                    else:
                        conn.end_stream(sid)
                    self.sent_end = True
        except STREAM_GONE:
            # The destination stream is gone (reset or closed by its peer): nothing more moves.
            self.close()
            self.ex.reset_from(dst, ErrorCodes.CANCEL)
        finally:
            dst.want_send()
            if acked:
                self.src.ack(acked, self.src_sid)
        if self.sent_end:
            self.ex.pipe_done(self)

    def close(self) -> None:
        """Abort: give the source back the window of everything still queued."""
        if self.closed:
            return
        self.closed = True
        if self.dst is not None:
            self.dst.blocked.discard(self)
        pending = sum(item[1] for item in self.queue)
        self.queue.clear()
        if self.src is not None:
            self.src.ack(pending, self.src_sid)


class _Exchange:
    """One request/response: a downstream stream paired with an upstream stream."""

    __slots__ = ("down", "down_sid", "up", "up_sid", "req", "resp", "headers", "started",
                 "status", "response_started", "finished", "timer", "service", "peer", "grpc",
                 "task", "connect_timeout", "lkey", "req_bytes", "resp_bytes", "flags",
                 "grpc_status", "span", "log")

    def __init__(self, down: H2Downstream, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.down = down
        self.down_sid = sid
        self.up: H2Upstream | None = None
        self.up_sid: int | None = None
        self.req = _Pipe(self, down, sid)
        self.resp = _Pipe(self, None, None)
        self.resp.dst = down
        self.resp.dst_sid = sid
        self.headers = headers
        self.started = time.monotonic()
        self.status = 0
        self.response_started = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.service = ""
        self.peer: str | None = None
        self.grpc = False
        self.task: asyncio.Task | None = None
        self.connect_timeout = CONNECT_TIMEOUT
        self.lkey = ""  # telemetry: Istio label key, body bytes, response flags, grpc-status
        self.req_bytes = self.resp_bytes = 0
        self.flags = NO_FLAGS
        self.grpc_status = ""
        self.span = None  # sidecar.tracing.Span when tracing is on
        self.log: tuple | None = None  # access log: (method, path, headers, upstream endpoint)

    def attach(self, up: H2Upstream) -> None:
        """Open the upstream stream and send the request headers, then whatever DATA waits."""
        if self.finished:
            return
        conn = up.h2
        sid = conn.get_next_available_stream_id()
        req = self.req
        empty = req.ended and not req.queue and not req.trailers
        try:
            conn.send_headers(sid, self.headers, end_stream=empty)
        except h2.exceptions.TooManyStreamsError:
            # Streams we reset but h2 still counts: let the client retry (safe, never sent).
            self.down.reset(self.down_sid, ErrorCodes.REFUSED_STREAM)
            self.finish(0)
            return
        self.headers = None  # type: ignore[assignment]
        self.up = up
        self.up_sid = sid
        self.peer = self.peer if self.down.ctx.inbound_target else up.peer_identity
        up.streams[sid] = self
        up.touch()
        req.dst = up
        req.dst_sid = sid
        self.resp.src = up
        self.resp.src_sid = sid
        if empty:
            req.sent_end = True
        up.want_send()
        req.flush()

    async def connect(self, pool: H2Pool, endpoint: Endpoint, alpn: str) -> None:
        try:
            up = await pool.acquire(endpoint, alpn, self.connect_timeout)
        except Exception as e:  # UpstreamError, OSError, TimeoutError: all mean 503
            self.task = None
            log.info("h2 upstream %s:%s (%s) failed: %s", endpoint.address, endpoint.port, alpn, e)
            self.flags = "UF"
            self.local_reply(503, f"upstream connect error: {e}")
            return
        self.task = None
        self.attach(up)

    # -- upstream → downstream ----------------------------------------------------------
    def on_response(self, headers: list[tuple[bytes, bytes]], informational: bool,
                    ended: bool = False) -> None:
        if self.finished:
            return
        try:
            if not informational:
                self.status = int(dict(headers).get(b":status", b"0"))
                self.response_started = True
                if self.grpc and ended:  # trailers-only: grpc-status is in these headers
                    self.grpc_status = dict(headers).get(b"grpc-status", b"").decode()
            # A trailers-only response (gRPC errors) must stay one HEADERS frame with END_STREAM.
            self.down.h2.send_headers(self.down_sid, _filter(headers), end_stream=ended)
        except STREAM_GONE:
            self.finish(self.status)
            return
        self.down.want_send()
        if ended:
            self.resp.ended = self.resp.sent_end = True
            self.pipe_done(self.resp)

    def pipe_done(self, pipe: _Pipe) -> None:
        if pipe is self.resp:
            # Response complete. A request still being sent is no longer wanted: tell both ends.
            if not self.req.sent_end:
                self.req.close()
                if self.up is not None:
                    self.up.reset(self.up_sid, ErrorCodes.CANCEL)
                if not self.req.ended:
                    self.down.reset(self.down_sid, ErrorCodes.NO_ERROR)
            self.finish(self.status)

    # -- failures -----------------------------------------------------------------------
    def reset_from(self, side: _Side, code: int) -> None:
        """RST_STREAM from one end: reset the paired stream with the same code."""
        if self.finished:
            return
        if side is self.down:
            if self.up is not None:
                self.up.reset(self.up_sid, code)
        elif self.response_received():
            return
        else:
            self.down.reset(self.down_sid, code)
        self.finish(self.status)

    def response_received(self) -> bool:
        """The whole response is here (maybe waiting for the client's window): deliver it.

        A server may reset (NO_ERROR) or close right after its response to stop the request
        body; that must not cut off response bytes still queued for a slow client.
        """
        if not self.resp.ended or self.resp.closed:
            return False
        self.req.close()
        return True

    def side_lost(self, side: _Side) -> None:
        if self.finished:
            return
        if side is self.down:
            if self.up is not None:
                self.up.reset(self.up_sid, ErrorCodes.CANCEL)
            self.finish(self.status)
        elif self.response_received():
            return
        elif not self.response_started:
            self.flags = "UC"
            self.local_reply(503, "upstream connect error or disconnect/reset before headers")
        else:
            self.down.reset(self.down_sid, ErrorCodes.INTERNAL_ERROR)
            self.finish(self.status)

    def refused(self) -> None:
        """The upstream GOAWAY says this stream was never processed: the client may retry."""
        self.down.reset(self.down_sid, ErrorCodes.REFUSED_STREAM)
        self.finish(self.status)

    def on_timeout(self) -> None:
        self.timer = None
        if self.finished:
            return
        if self.up is not None:
            self.up.reset(self.up_sid, ErrorCodes.CANCEL)
        if self.response_started:
            self.down.reset(self.down_sid, ErrorCodes.CANCEL)
            self.finish(504)
        else:
            self.flags = "UT"
            self.local_reply(504, "upstream request timeout")

    def local_reply(self, status: int, message: str) -> None:
        """Answer the downstream stream ourselves (503/504); gRPC callers get a grpc-status."""
        if self.finished:
            return
        if self.up is not None:
            self.up.reset(self.up_sid, ErrorCodes.CANCEL)
        down = self.down
        if self.response_started:
            down.reset(self.down_sid, ErrorCodes.INTERNAL_ERROR)
        else:
            body = message.encode()
            if self.grpc:
                code = GRPC_DEADLINE_EXCEEDED if status == 504 else GRPC_UNAVAILABLE
                self.grpc_status = code.decode()
                headers = [(b":status", str(status).encode()), (b"content-type", b"application/grpc"),
                           (b"grpc-status", code), (b"grpc-message", body)]
            else:
                headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain"),
                           (b"content-length", str(len(body)).encode())]
            try:
                down.h2.send_headers(self.down_sid, headers, end_stream=self.grpc)
                if not self.grpc:
                    down.h2.send_data(self.down_sid, body, end_stream=True)
                if not self.req.ended:  # we answered: the rest of the request is not wanted
                    down.h2.reset_stream(self.down_sid, ErrorCodes.NO_ERROR)
            except (*STREAM_GONE, h2.exceptions.FlowControlError):
                down.reset(self.down_sid, ErrorCodes.INTERNAL_ERROR)
            down.want_send()
        self.finish(status)

    def finish(self, status: int) -> None:
        """Count the exchange once and release both streams."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.grpc and not self.grpc_status and self.resp.trailers:
            self.grpc_status = dict(self.resp.trailers).get(b"grpc-status", b"").decode()
        self.req.close()
        self.resp.close()
        down = self.down
        direction = "inbound" if down.ctx.inbound_target else "outbound"
        duration = time.monotonic() - self.started
        down.ctx.stats.request_done(direction, self.service, status, duration, self.peer)
        if self.lkey:
            down.ctx.stats.exchange_done(self.lkey, status, self.grpc_status, self.flags,
                                         self.req_bytes, self.resp_bytes, duration)
        ctx = down.ctx
        if self.span is not None or ctx.access_log is not None:
            cluster = (f"inbound|{ctx.inbound_target[1]}||" if ctx.inbound_target else
                       f"outbound|{ctx.outbound_port.port if ctx.outbound_port else 0}||{self.service}")
        if ctx.access_log is not None and self.log is not None:
            method, path, headers, up = self.log
            inbound = ctx.inbound_target is not None
            ctx.access_log.request(
                time.time() - duration, method, path, "HTTP/2", status, self.flags,
                self.req_bytes, self.resp_bytes, duration, headers, b"",
                f"{up.address}:{up.port}" if up else "", cluster,
                self.peer if inbound else None, None if inbound else self.peer,
                self.span.trace_id if self.span is not None else 0)
        if self.span is not None:
            ctx.tracer.end(self.span, status, self.flags, cluster, self.peer, self.req_bytes,
                           self.resp_bytes)
            self.span = None
        if self.up is not None:
            self.up.drop(self.up_sid)
        down.drop(self.down_sid)


class H2Upstream(_Side):
    """Client end of a pooled upstream h2 connection (to a peer proxy, or to the app)."""

    client_side = True

    def __init__(self, pool: H2Pool, key: PoolKey) -> None:
        super().__init__()
        self.pool = pool
        self.key = key
        self.peer_identity: str | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    def usable(self) -> bool:
        """Can take one more stream now (not closing, below the peer's concurrency limit)."""
        if self.closed or self.goaway_received:
            return False
        # Our own count: h2's open_outbound_streams walks every stream on each call.
        return len(self.streams) < self.h2.remote_settings.max_concurrent_streams

    def touch(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def drop(self, stream_id: int | None) -> None:
        super().drop(stream_id)
        if self.streams or self.closed:
            return
        self.touch()
        if self.goaway_received:
            self.close()
        else:
            loop = asyncio.get_running_loop()
            self.idle_timer = loop.call_later(IDLE_TIMEOUT, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.touch()
        self.pool.forget(self)
        super().connection_lost(exc)

    def in_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.resp

    def out_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.req

    def _on_response(self, ev: h2.events.ResponseReceived) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            ex.on_response(ev.headers, informational=False, ended=ev.stream_ended is not None)

    def _on_informational(self, ev: h2.events.InformationalResponseReceived) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            ex.on_response(ev.headers, informational=True)

    def _on_goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        """Upstream GOAWAY: no new streams here; streams above last_stream_id were refused."""
        self.goaway_received = True
        self.pool.forget(self)
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        for sid, ex in list(self.streams.items()):
            if sid > last:
                ex.refused()
            elif ev.error_code != ErrorCodes.NO_ERROR:
                ex.side_lost(self)
        if not self.streams:
            self.close()

    _handlers = {
        **_Side._handlers,
        h2.events.ResponseReceived: _on_response,
        h2.events.InformationalResponseReceived: _on_informational,
        h2.events.ConnectionTerminated: _on_goaway,
    }


def pool_key(endpoint: Endpoint, alpn: str) -> PoolKey:
    return (endpoint.address, endpoint.port, alpn, endpoint.identity)


class H2Pool:
    """Upstream h2 connections keyed by (address, port, ALPN, identity); streams multiplex.

    A new connection is opened only when every open one is at its peer's
    MAX_CONCURRENT_STREAMS or going away; concurrent requests for the same key share one
    connect attempt.
    """

    _by_connector: weakref.WeakKeyDictionary[Any, H2Pool] = weakref.WeakKeyDictionary()

    def __init__(self, connector: Connector) -> None:
        # Weak: the pool lives in a WeakKeyDictionary keyed by this connector.
        self._connector = weakref.ref(connector)
        self.conns: dict[PoolKey, list[H2Upstream]] = {}
        self.connecting: dict[PoolKey, asyncio.Task[H2Upstream]] = {}

    @classmethod
    def for_connector(cls, connector: Connector) -> H2Pool:
        """The pool shared by every downstream connection that uses this connector.

        A new Connector (new certificates or source binding) gets a new pool; connections
        of the old pool live on until their streams finish or they idle out.
        """
        pool = cls._by_connector.get(connector)
        if pool is None:
            pool = cls._by_connector[connector] = cls(connector)
        return pool

    def pick(self, key: PoolKey) -> H2Upstream | None:
        for conn in self.conns.get(key, ()):
            if conn.usable():
                return conn
        return None

    async def acquire(self, endpoint: Endpoint, alpn: str,
                      timeout: float = 5.0) -> H2Upstream:
        """A connection with room for one more stream; the caller must open it right away."""
        key = pool_key(endpoint, alpn)
        while True:
            conn = self.pick(key)
            if conn is not None:
                return conn
            task = self.connecting.get(key)
            if task is None:
                # The connect runs on its own: a waiter that gives up does not cancel it for all.
                task = asyncio.get_running_loop().create_task(
                    self._connect(endpoint, alpn, key, timeout))
                self.connecting[key] = task
                task.add_done_callback(lambda t, key=key: self._connected(key, t))
            await asyncio.shield(task)  # its failure is every waiter's failure

    def _connected(self, key: PoolKey, task: asyncio.Task[H2Upstream]) -> None:
        if self.connecting.get(key) is task:
            del self.connecting[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: the waiters report it

    async def _connect(self, endpoint: Endpoint, alpn: str, key: PoolKey,
                       timeout: float) -> H2Upstream:
        connector = self._connector()
        if connector is None:
            raise ConnectionError("the proxy replaced this connector")
        _, proto, peer = await connector.connect(endpoint, alpn, lambda: H2Upstream(self, key),
                                                 timeout)
        proto.peer_identity = peer
        if proto.closed:
            raise ConnectionError("upstream closed the connection right after connecting")
        self.conns.setdefault(key, []).append(proto)
        return proto

    def forget(self, conn: H2Upstream) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.key]

    def close(self) -> None:
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.close()


# One poll per event loop for all downstream connections, rather than a timer per connection.
_live_downstreams: weakref.WeakSet[H2Downstream] = weakref.WeakSet()
_drain_polls: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.TimerHandle] = (
    weakref.WeakKeyDictionary()
)


def _watch_draining() -> None:
    loop = asyncio.get_running_loop()
    if loop not in _drain_polls:
        _drain_polls[loop] = loop.call_later(DRAIN_POLL, _check_draining)


def _check_draining() -> None:
    """Send GOAWAY on every downstream connection whose proxy started draining (even idle ones)."""
    loop = asyncio.get_running_loop()
    _drain_polls.pop(loop, None)
    for down in list(_live_downstreams):
        if not down.closed and not down.goaway_sent and down.ctx.draining():
            down.drain()
    if _live_downstreams:
        _watch_draining()


class H2Downstream(_Side):
    """Server end of one downstream connection: app → outbound proxy, or peer → inbound proxy."""

    client_side = False

    def __init__(self, ctx: H2Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.pool = H2Pool.for_connector(ctx.connector)
        self.goaway_sent = False
        self.last_stream_id = 0
        self.inbound_endpoint = (
            Endpoint(address=ctx.inbound_target[0], port=ctx.inbound_target[1], identity=None)
            if ctx.inbound_target else None
        )
        self.inbound_service = f"inbound|{ctx.inbound_target[1]}" if ctx.inbound_target else ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _live_downstreams.add(self)
        _watch_draining()

    def connection_lost(self, exc: Exception | None) -> None:
        _live_downstreams.discard(self)
        super().connection_lost(exc)

    def in_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.req

    def out_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.resp

    def protocol_error(self, err: Exception) -> None:
        self.ctx.stats.protocol_error()  # remora_downstream_protocol_errors_total
        super().protocol_error(err)

    def drain(self) -> None:
        """Graceful GOAWAY: streams opened so far finish, new ones are refused."""
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self.h2.send_goaway(self.last_stream_id)
        self.want_send()
        if not self.streams:
            self.close()

    def drop(self, stream_id: int | None) -> None:
        super().drop(stream_id)
        if not self.streams and (self.goaway_sent or self.goaway_received):
            self.close()

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if not self.goaway_sent and self.ctx.draining():
            self.drain()
        if self.goaway_sent and sid > self.last_stream_id:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        headers = _filter(ev.headers)
        method = path = b""
        has_id = False
        ex = _Exchange(self, sid, headers)
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                ex.service = value.decode("ascii", "replace")
            elif name == b"x-request-id":
                has_id = True
            elif name == b"content-type" and value.startswith(b"application/grpc"):
                ex.grpc = True
        if not has_id:
            headers.append((b"x-request-id", str(uuid.uuid4()).encode()))
        self.streams[sid] = ex
        if ev.stream_ended:
            ex.req.ended = True
        ctx = self.ctx
        if ctx.tracer is not None:
            if ctx.inbound_target:
                host = ctx.labels.inbound_services.get(ctx.inbound_target) if ctx.labels else None
                name = f"{host or 'inbound'}:{ctx.inbound_target[1]}/*"
            else:
                port = ctx.outbound_port
                name = f"{port.service}:{port.port}/*" if port else "outbound/*"
            ex.span, forward = ctx.tracer.start(headers, SERVER if ctx.inbound_target else CLIENT,
                                                name, method, path, "HTTP/2")
            headers[:] = h2_rewrite(headers, forward)
        if self.inbound_endpoint is not None:
            ex.peer = ctx.peer_identity
            ex.service = self.inbound_service  # named like the HTTP/1.1 inbound side
            if ctx.labels is not None:
                peer = self.transport.get_extra_info("peername")
                ex.lkey = ctx.labels.inbound(peer[0] if peer else None, ctx.inbound_target,
                                             ctx.peer_identity,
                                             PROTO_GRPC if ex.grpc else PROTO_HTTP)
            endpoint, alpn = self.inbound_endpoint, "h2"
        else:
            endpoint = self._route(ex, method, path, headers)
            if endpoint is None:
                return
            alpn = "remora-h2" if endpoint.identity else "h2"
        if ctx.access_log is not None:
            ex.log = (method, path, headers, endpoint)
        up = self.pool.pick(pool_key(endpoint, alpn))
        if up is not None:
            ex.attach(up)
        else:
            ex.task = asyncio.get_running_loop().create_task(ex.connect(self.pool, endpoint, alpn))

    def _route(self, ex: _Exchange, method: bytes, path: bytes,
               headers: list[tuple[bytes, bytes]]) -> Endpoint | None:
        """Outbound: ask the router; answer 503 ourselves when it has no endpoint."""
        router = self.ctx.router
        if router is None:
            ex.local_reply(503, "no route: this listener has no router")
            return None
        decision = router.resolve(self.ctx.outbound_port, method, path, headers)
        status, endpoint, cluster = decision.status, decision.endpoint, decision.cluster
        if cluster is not None:
            ex.service = cluster.service
            ex.connect_timeout = cluster.connect_timeout
        if self.ctx.labels is not None:
            ex.lkey = self.ctx.labels.outbound(cluster.service if cluster else "", endpoint,
                                               PROTO_GRPC if ex.grpc else PROTO_HTTP)
        if status or endpoint is None:
            ex.flags = "NR" if status == 404 else "UH"
            if self.ctx.access_log is not None:
                ex.log = (method, path, headers, None)
            ex.local_reply(status or 503, decision.message or "no healthy upstream")
            return None
        timeout = decision.timeout
        if timeout:
            ex.timer = asyncio.get_running_loop().call_later(timeout, ex.on_timeout)
        return endpoint

    def _on_client_goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        """The app/peer will open no more streams; let the open ones finish, then close."""
        self.goaway_received = True
        if not self.streams or ev.error_code != ErrorCodes.NO_ERROR:
            self.close()

    _handlers = {
        **_Side._handlers,
        h2.events.RequestReceived: _on_request,
        h2.events.ConnectionTerminated: _on_client_goaway,
    }
