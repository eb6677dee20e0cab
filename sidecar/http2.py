"""HTTP/2 relay of the sidecar: one server codec per downstream connection, pooled client
codecs upstream. The relay sees only the codec interface (``sidecar/http/events.py``):
``H2Codec`` on h2 today, a libnghttp2 codec later; the request policy is the exchange's
(``sidecar/http/exchange.py``, ``headers.py``, ``replies.py``), shared with HTTP/1.1.

Each downstream stream is paired with one stream on a pooled upstream connection (an
``_Exchange``). Bytes move through two ``_Pipe`` objects (request: downstream → upstream,
response: upstream → downstream). A pipe acknowledges received DATA to its source only once
the bytes were handed to the destination connection within the destination's flow-control
window, so a slow reader stalls the sender through HTTP/2 flow control instead of growing a
buffer here. What a pipe holds is therefore bounded by the window we advertised to its source.
When a transport's write buffer passes its high-water mark the side stops reading from that
peer and stops moving DATA into it until the buffer drains (pause_reading/resume_reading).

Graceful GOAWAY both ways is the codec's (``h2codec.GracefulH2Connection``). See
docs/http2.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from control_plane.api.model import Endpoint

from .http import events as ev_
from .http import h2select, replies
from .http import limits as limits_
from .http import mirror as mirror_copy
from .http.events import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    NoStreamAvailable,
    StreamGone,
)
from .http.exchange import (
    Authorizer,
    Exchange,
    authorize,
    grpc_status,
    inbound_label_keys,
)
from .http.headers import request_headers, response_headers, xfcc_value
from .http.policy import MAX_REPLAY_BYTES, Plan, grpc_status_header, plan_outbound
from .labels import GRPC, HTTP
from .tracing import h2_rewrite
from .traffic.flags import DC, UC, UF, UT
from .traffic.retry import Outcome
from .upstream import pool_idle_timeout

if TYPE_CHECKING:
    from control_plane.api.model import Cluster, OutboundPort
    from sidecar.accesslog import AccessLog
    from sidecar.labels import Labeler
    from sidecar.routing import Router
    from sidecar.stats import Stats
    from sidecar.tracing import Tracer
    from sidecar.traffic.pool import PoolLimits
    from sidecar.upstream import Connector

log = logging.getLogger("remora.http2")

HIGH_WATER = 256 * 1024  # transport write buffer: stop reading that peer above this
LOW_WATER = 64 * 1024
CONNECT_TIMEOUT = 5.0  # when the cluster does not say (inbound hop to the app)

# (address, port, ALPN, expected identity): a reused pod IP never gets a connection that was
# verified for the workload that had it before.
PoolKey = tuple[str, int, str, str | None]


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
    pool: H2Pool  # the runtime's upstream pool for this direction
    registry: set[Any] | None = None  # open downstream connections, drained by the runtime
    closed: Callable[[], None] | None = None  # counts this connection's close (once)
    local_identity: str | None = None  # inbound: this proxy's SPIFFE ID (the XFCC's By=)
    # Outbound: the current router (a config push applies to the next request on an open
    # connection too) and the original destination that selects the service port in it.
    current_router: Callable[[], Router] | None = None
    original_dst: tuple[str, int] | None = None
    authorizer: Authorizer | None = None  # inbound: the authorization policy (None: none)
    labels: Labeler | None = None  # Istio's metric labels (None: only the remora_* series)
    tracer: Tracer | None = None  # None: tracing off, trace headers pass through untouched
    access_log: AccessLog | None = None  # None: access logs off


class _Side(asyncio.Protocol):
    """One h2 connection (either end) and the streams of it that are paired with the other end."""

    client_side = False

    def __init__(self) -> None:
        # The native codec when built (h2select): queues the preface and our SETTINGS.
        self.codec = h2select.new_codec(self.client_side)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Exchange] = {}
        self.blocked: set[_Pipe] = set()  # pipes into this side waiting for window/writability
        self.write_paused = False
        self.closed = False
        self.goaway_received = False
        self._send_scheduled = False
        # Cached: asyncio.get_running_loop() makes a getpid() syscall per call on 3.11.
        self.loop = asyncio.get_running_loop()

    # -- transport plumbing -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.send_now()

    def want_send(self) -> None:
        """Write the codec's output soon: one write per event-loop turn, not one per frame."""
        if not self._send_scheduled and not self.closed:
            self._send_scheduled = True
            self.loop.call_soon(self.send_now)

    def send_now(self) -> None:
        self._send_scheduled = False
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        data = self.codec.data_to_send()
        if data:
            self.transport.write(data)
        if self.codec.failed:  # the codec sent an error GOAWAY: nothing more will be read
            self.transport.close()

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
        events = self.codec.feed(data)
        handler_of = self._handlers.get
        try:
            for ev in events:
                handler = handler_of(type(ev))
                if handler is not None:
                    handler(self, ev)
        except Exception:  # a relay bug must cost this connection, not the proxy's loop
            log.exception("%s: HTTP/2 relay failure; closing the connection", type(self).__name__)
            self.close()
            return
        self.want_send()

    def _on_protocol_error(self, ev: ev_.ProtocolError) -> None:
        """The codec queued GOAWAY(PROTOCOL_ERROR): write it and close."""
        log.info("%s: %s", type(self).__name__, ev.message)
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

    def _on_data(self, ev: ev_.Data) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is None:  # stream already torn down: give the window back and drop the bytes
            self.ack(ev.flow, ev.stream_id)
            return
        if self.client_side:  # body bytes: an upstream sends the response
            ex.resp_bytes += len(ev.data)
            ex.resp.push(ev.data, ev.flow)
        else:
            ex.req_bytes += len(ev.data)
            ex.req.push(ev.data, ev.flow)

    def _on_trailers(self, ev: ev_.Trailers) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            pipe = self.in_pipe(ex)
            pipe.trailers = response_headers(ev.headers)
            pipe.finish()  # trailers end the message

    def _on_ended(self, ev: ev_.EndOfMessage) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            (ex.resp if self.client_side else ex.req).finish()

    def _on_reset(self, ev: ev_.StreamReset) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            ex.reset_from(self, ev.code)

    def _on_window(self, ev: ev_.WindowOpen) -> None:
        if ev.stream_id == 0:  # the connection window, or SETTINGS grew every stream's
            self.flush_blocked()
            return
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            self.out_pipe(ex).flush()

    def ack(self, n: int, stream_id: int) -> None:
        if n and not self.closed:
            self.codec.ack(stream_id, n)
            if not self._send_scheduled:
                self.want_send()

    def reset(self, stream_id: int | None, code: int) -> None:
        if stream_id is None or self.closed:
            return
        self.codec.send_reset(stream_id, code)
        self.want_send()

    def drop(self, stream_id: int | None) -> None:
        """Forget a finished exchange; subclasses close an idle connection as they see fit."""
        if stream_id is not None:
            self.streams.pop(stream_id, None)

    _handlers: dict[type, Callable[[Any, Any], None]] = {
        ev_.Data: _on_data,
        ev_.Trailers: _on_trailers,
        ev_.EndOfMessage: _on_ended,
        ev_.StreamReset: _on_reset,
        ev_.WindowOpen: _on_window,
        ev_.ProtocolError: _on_protocol_error,
    }


class _Pipe:
    """One direction of an exchange: DATA and trailers from ``src`` stream to ``dst`` stream."""

    __slots__ = ("ex", "src", "src_sid", "dst", "dst_sid", "queue", "ended", "trailers",
                 "sent_end", "closed")

    def __init__(self, ex: _Exchange, src: _Side | None, src_sid: int | None,
                 dst: _Side | None = None, dst_sid: int | None = None) -> None:
        self.ex = ex
        self.src = src
        self.src_sid = src_sid
        self.dst = dst
        self.dst_sid = dst_sid
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
        dst = self.dst
        if (not self.queue and dst is not None and not self.sent_end and not dst.write_paused
                and not dst.closed):
            # The common case (a response chunk within the window): no queue entry, no loop.
            try:
                if dst.codec.send_window(self.dst_sid) >= len(data):
                    dst.codec.send_data(self.dst_sid, data)
                    if not dst._send_scheduled:
                        dst.want_send()
                    self.src.ack(flow_len, self.src_sid)
                    return
            except StreamGone:
                pass  # flush() below finds it gone again and resets the pair
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
        codec = dst.codec
        sid = self.dst_sid
        queue = self.queue
        acked = 0
        try:
            while queue:
                item = queue[0]
                data = item[0]
                if data:
                    window = codec.send_window(sid)
                    if window <= 0:
                        break
                    if window < len(data):
                        codec.send_data(sid, data[:window])
                        item[0] = data[window:]
                        item[1] -= window
                        acked += window
                        continue
                    codec.send_data(sid, data)
                queue.popleft()
                acked += item[1]
            if queue:
                dst.blocked.add(self)
            else:
                dst.blocked.discard(self)
                if self.ended:
                    if self.trailers:
                        codec.send_trailers(sid, self.trailers)
                    else:
                        codec.send_end(sid)
                    self.sent_end = True
        except StreamGone:
            # The destination stream is gone (reset or closed by its peer): nothing more moves.
            self.close()
            self.ex.reset_from(dst, CANCEL)
        finally:
            if not dst._send_scheduled:
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
        queue = self.queue
        if queue:
            pending = sum(item[1] for item in queue)
            queue.clear()
            if self.src is not None:
                self.src.ack(pending, self.src_sid)


class _Exchange(Exchange):
    """One request/response: a downstream stream paired with an upstream stream."""

    __slots__ = ("down", "down_sid", "up", "up_sid", "req", "resp", "head",
                 "status", "response_started", "timer", "grpc", "task", "connect_timeout",
                 "plan", "sent_head", "replay", "replay_size", "try_timer", "mirror_pending")

    def __init__(self, down: H2Downstream, sid: int, head: ev_.RequestHead) -> None:
        super().__init__(down.ctx)
        self.down = down
        self.down_sid = sid
        self.up: H2Upstream | None = None
        self.up_sid: int | None = None
        self.req = _Pipe(self, down, sid)
        self.resp = _Pipe(self, None, None, down, sid)
        self.head: ev_.RequestHead | None = head  # until it is sent upstream
        self.status = 0
        self.response_started = False
        self.timer: asyncio.TimerHandle | None = None
        self.grpc = False
        self.task: asyncio.Task | None = None
        self.connect_timeout = CONNECT_TIMEOUT
        # Route policies (sidecar/http/policy.py): the plan, and what a retry or mirror resends.
        self.plan: Plan | None = None
        self.sent_head: ev_.RequestHead | None = None
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.try_timer: asyncio.TimerHandle | None = None
        self.mirror_pending = False

    def attach(self, up: H2Upstream) -> None:
        """Open the upstream stream and send the request headers, then whatever DATA waits."""
        head = self.head
        if self.finished or head is None:
            return
        req = self.req
        empty = req.ended and not req.queue and not req.trailers
        head.end_stream = empty
        self.sent_head = head  # kept for a retry, the mirror and the access log's authority
        if self.plan is not None:
            self.plan.attempt_started()
            if self.plan.per_try:
                self.try_timer = self.down.loop.call_later(self.plan.per_try, self.try_timed_out)
        try:
            sid = up.codec.send_request_head(head)
        except NoStreamAvailable:
            # Streams we reset but the codec still counts: let the client retry (never sent).
            self.down.reset(self.down_sid, REFUSED_STREAM)
            self.finish(0)
            return
        self.head = None
        self.up = up
        self.up_sid = sid
        if self.plan is not None:
            up.cluster = self.plan.cluster  # its DestinationRule idleTimeout applies once idle
        up.served += 1  # counted whatever the limit: a later limit applies to it too
        plan = self.plan
        if plan is not None and plan.pool is not None and plan.pool.connection_exhausted(up.served):
            up.retired = True  # maxRequestsPerConnection: this stream is its last
            up.pool.forget(up)
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
            pool_limits = self.plan.pool if self.plan is not None else None
            up = await pool.acquire(endpoint, alpn, self.connect_timeout, pool_limits)
        except Exception as e:  # UpstreamError, OSError, TimeoutError: all mean 503
            self.task = None
            log.info("h2 upstream %s:%s (%s) failed: %s", endpoint.address, endpoint.port, alpn, e)
            if self.plan is not None:
                self.plan.attempt_started()  # counted as a failed try of that endpoint
            if not self.retry(Outcome(connect_failure=True)):
                self.add_flag(UF)
                self.local_reply(503, f"upstream connect error: {e}")
            return
        self.task = None
        self.attach(up)

    # -- upstream → downstream ----------------------------------------------------------
    def on_response(self, head: ev_.ResponseHead) -> None:
        if self.finished:
            return
        status = head.status
        ended = head.end_stream
        headers = response_headers(head.headers)
        plan = self.plan
        if plan is not None and status >= 200:
            self._cancel_try()
            grpc = next((v for k, v in headers if k == b"grpc-status"), None) if ended else None
            outcome = Outcome(status=status, grpc_status=int(grpc) if grpc and grpc.isdigit() else None)
            if self.retry(outcome):
                return
            headers = plan.response_headers(headers)
        try:
            if status >= 200:
                self.status = status
                self.response_started = True
                if ended and self.grpc:  # trailers-only: grpc-status is in the head
                    self.grpc_status = grpc_status(head.headers)
            # A trailers-only response (gRPC errors) must stay one HEADERS frame with END_STREAM.
            self.down.codec.send_response_head(self.down_sid, status, headers, ended)
        except StreamGone:
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
                    self.up.reset(self.up_sid, CANCEL)
                if not self.req.ended:
                    self.down.reset(self.down_sid, NO_ERROR)
            self.finish(self.status)

    # -- failures -----------------------------------------------------------------------
    def reset_from(self, side: _Side, code: int) -> None:
        """RST_STREAM from one end: reset the paired stream with the same code."""
        if self.finished:
            return
        if side is self.down:
            self.add_flag(DC)
            if self.up is not None:
                self.up.reset(self.up_sid, code)
        elif self.response_received():
            return
        elif code == REFUSED_STREAM and not self.response_started:
            self.refused()  # never processed upstream: retryOn refused-stream may retry it
            return
        else:
            self.add_flag(UC)
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
            self.add_flag(DC)
            if self.up is not None:
                self.up.reset(self.up_sid, CANCEL)
            self.finish(self.status)
        elif self.response_received():
            return
        elif not self.response_started:
            if not self.retry(Outcome(reset=True)):
                self.add_flag(UC)
                self.local_reply(503, replies.UPSTREAM_RESET)
        else:
            self.add_flag(UC)
            self.down.reset(self.down_sid, INTERNAL_ERROR)
            self.finish(self.status)

    def refused(self) -> None:
        """The upstream GOAWAY says this stream was never processed: the client may retry."""
        if self.retry(Outcome(refused_stream=True, reset=True)):
            return
        self.down.reset(self.down_sid, REFUSED_STREAM)
        self.finish(self.status)

    # -- route policies (sidecar/http/policy.py) ---------------------------------------------
    def dispatch(self, endpoint: Endpoint) -> None:
        """Send the request to ``endpoint``: a pooled connection, else a new one."""
        if self.finished:
            return
        alpn = "remora-h2" if endpoint.identity else "h2"
        self.upstream = endpoint  # telemetry: the endpoint of the last try
        pool = self.down.pool
        up = pool.pick(pool_key(endpoint, alpn))
        if up is not None:
            self.attach(up)
        else:
            self.task = self.down.loop.create_task(self.connect(pool, endpoint, alpn))

    def _cancel_try(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def try_timed_out(self) -> None:
        self.try_timer = None
        if self.finished or self.response_started:
            return
        if not self.retry(Outcome(timed_out=True, reset=True)):
            self.add_flag(UT)
            self.local_reply(504, replies.UPSTREAM_TIMEOUT)

    def retry(self, outcome: Outcome) -> bool:
        """After a failed try: drop that upstream stream and schedule the next try (True), or
        leave the answer to the caller (False)."""
        plan = self.plan
        self._cancel_try()
        if plan is None or self.finished:
            return False
        wait = plan.retry(outcome, replayable=self.replay is not None and (self.sent_head or self.head) is not None)
        if wait is None:
            for flag in plan.flags:
                if flag not in self.flags.split(","):
                    self.add_flag(flag)
            return False
        if self.up is not None:  # forget the failed stream; the client's stream stays open
            self.up.reset(self.up_sid, CANCEL)
            self.up.drop(self.up_sid)
            self.up = None
            self.up_sid = None
        old = self.req
        req = _Pipe(self, self.down, self.down_sid)
        req.queue.extend([data, 0] for data in self.replay or ())
        req.ended, req.trailers = old.ended, old.trailers
        old.close()  # gives the client back the window of what it still held
        self.req = req
        self.resp = _Pipe(self, None, None, self.down, self.down_sid)
        if self.sent_head is not None:  # else it was never sent (connect failure): still in head
            self.head, self.sent_head = self.sent_head, None
        endpoint = plan.endpoint
        assert endpoint is not None
        self.down.loop.call_later(wait, self.dispatch, endpoint)
        return True

    def capture(self, data: bytes) -> None:
        """Keep a request body chunk for retries and the mirror, up to the replay bound."""
        self.replay_size += len(data)
        if self.replay_size > MAX_REPLAY_BYTES:
            self.replay = None
        else:
            self.replay.append(data)  # type: ignore[union-attr]

    def mirror(self) -> None:
        self.mirror_pending = False
        plan = self.plan
        if plan is None or plan.mirror_cluster is None or plan.router is None or self.replay is None:
            return
        mirror_copy.send(self.down.ctx.connector, plan.router, plan.mirror_cluster, self.method_of(),
                         plan.path, plan.authority, plan.headers, b"".join(self.replay),
                         h2_pool=self.down.pool)  # the copy goes over HTTP/2 too

    def method_of(self) -> bytes:
        head = self.head or self.sent_head
        return head.method if head is not None else b"GET"

    def authority(self) -> bytes:
        head = self.head or self.sent_head
        return head.authority if head is not None else b""

    def on_timeout(self) -> None:
        self.timer = None
        if self.finished:
            return
        self.add_flag(UT)
        if self.up is not None:
            self.up.reset(self.up_sid, CANCEL)
        if self.response_started:
            self.down.reset(self.down_sid, CANCEL)
            self.finish(504)
        else:
            self.local_reply(504, replies.UPSTREAM_TIMEOUT)

    def local_reply(self, status: int, message: str,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer the downstream stream ourselves (see ``replies``: same as HTTP/1.1)."""
        if self.finished:
            return
        self._cancel_try()
        if self.up is not None:
            self.up.reset(self.up_sid, CANCEL)
        down = self.down
        if self.response_started:
            down.reset(self.down_sid, INTERNAL_ERROR)
        else:
            codec, sid = down.codec, self.down_sid
            try:
                if self.grpc:
                    headers = replies.grpc_headers(status, message)
                    if self.plan is not None and self.plan.grpc_status is not None:  # fault abort
                        headers[1] = (b"grpc-status", grpc_status_header(self.plan))
                    self.grpc_status = grpc_status(headers)
                    codec.send_response_head(sid, status, headers + (extra or []), end_stream=True)
                elif not message:  # e.g. a CORS preflight: headers only
                    codec.send_response_head(sid, status, [(b"content-length", b"0"), *(extra or [])],
                                             end_stream=True)
                else:
                    headers, body = replies.plain_headers(status, message)
                    codec.send_response_head(sid, status, headers + (extra or []))
                    codec.send_data(sid, body, end_stream=True)
                    self.resp_bytes = len(body)
                if not self.req.ended:  # we answered: the rest of the request is not wanted
                    codec.send_reset(sid, NO_ERROR)
            except StreamGone:
                down.reset(sid, INTERNAL_ERROR)
            down.want_send()
        self.finish(status)

    def finish(self, status: int) -> None:
        """Count the exchange once and release both streams."""
        if self.grpc and not self.grpc_status and not self.finished:
            self.grpc_status = grpc_status(self.resp.trailers)
        if not self.done(status):
            return
        plan = self.plan
        if plan is not None:
            self._cancel_try()
            if self.response_started:
                plan.attempt_done(self.status)
            plan.finish()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        req, resp = self.req, self.resp
        req.close()
        resp.close()
        # Break the exchange <-> pipe cycle, so that reference counting frees the exchange
        # now rather than the cyclic GC later (every exchange left garbage for it). A closed
        # pipe never touches its exchange again.
        req.ex = resp.ex = None  # type: ignore[assignment]
        if self.up is not None:
            self.up.drop(self.up_sid)
        self.down.drop(self.down_sid)


class H2Upstream(_Side):
    """Client end of a pooled upstream h2 connection (to a peer proxy, or to the app)."""

    client_side = True

    def __init__(self, pool: H2Pool, key: PoolKey) -> None:
        super().__init__()
        self.pool = pool
        self.key = key
        self.peer_identity: str | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.cluster: Cluster | None = None  # of the last stream (outbound): its idle timeout
        self.served = 0  # streams opened (maxRequestsPerConnection)
        self.retired = False  # out of the pool: closes once its streams are done

    def usable(self) -> bool:
        """Can take one more stream now (not closing, below the peer's concurrency limit)."""
        if self.closed or self.goaway_received:
            return False
        # Our own count: h2's open_outbound_streams walks every stream on each call.
        return len(self.streams) < self.codec.peer_max_streams()

    def touch(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def drop(self, stream_id: int | None) -> None:
        super().drop(stream_id)
        if self.streams or self.closed:
            return
        self.touch()
        if self.goaway_received or self.retired:
            self.close()
        else:
            idle = pool_idle_timeout(self.cluster)  # 0: kept until the peer closes it
            if idle:
                self.idle_timer = self.loop.call_later(idle, self.idle_close)

    def idle_close(self) -> None:
        """Unused for the pool's idle timeout: GOAWAY, then close (Envoy's idle_timeout)."""
        self.idle_timer = None
        self.pool.forget(self)
        self.codec.send_goaway()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.touch()
        self.pool.forget(self)
        super().connection_lost(exc)

    def in_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.resp

    def out_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.req

    def _on_response(self, ev: ev_.ResponseHead) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None:
            ex.on_response(ev)

    def _on_goaway(self, ev: ev_.GoAway) -> None:
        """Upstream GOAWAY: no new streams here; streams above last_stream_id were refused."""
        self.goaway_received = True
        self.pool.forget(self)
        last = ev.last_stream_id
        for sid, ex in list(self.streams.items()):
            if sid > last:
                ex.refused()
            elif ev.code != NO_ERROR:
                ex.side_lost(self)
        if not self.streams:
            self.close()

    _handlers = {
        **_Side._handlers,
        ev_.ResponseHead: _on_response,
        ev_.GoAway: _on_goaway,
    }


def pool_key(endpoint: Endpoint, alpn: str) -> PoolKey:
    return (endpoint.address, endpoint.port, alpn, endpoint.identity)


class H2Pool:
    """Upstream h2 connections keyed by (address, port, ALPN, identity); streams multiplex.

    A new connection is opened only when every open one is at its peer's
    MAX_CONCURRENT_STREAMS or going away; concurrent requests for the same key share one
    connect attempt.
    """

    def __init__(self, connector: Connector) -> None:
        # One pool per connector, owned by the runtime (outbound and inbound) and handed to
        # every downstream connection in its context.
        self.connector = connector
        if getattr(connector, "h2_pool", None) is None:  # HTTP/1.1's mirror copies (mirror.py)
            connector.h2_pool = self
        self.conns: dict[PoolKey, list[H2Upstream]] = {}
        self.connecting: dict[PoolKey, asyncio.Task[H2Upstream]] = {}

    def pick(self, key: PoolKey, limits: PoolLimits | None = None) -> H2Upstream | None:
        for conn in self.conns.get(key, ()):
            if limits is not None and limits.connection_exhausted(conn.served):
                # Over a maxRequestsPerConnection set after it was pooled: retired, as Envoy
                # drains the old cluster's connections (its open streams still finish).
                self._retire(conn)
                return self.pick(key, limits)
            if conn.usable():
                return conn
        return None

    def _retire(self, conn: H2Upstream) -> None:
        conn.retired = True
        self.forget(conn)
        if not conn.streams:
            conn.close()

    async def acquire(self, endpoint: Endpoint, alpn: str, timeout: float = 5.0,
                      limits: PoolLimits | None = None) -> H2Upstream:
        """A connection with room for one more stream; the caller must open it right away.
        ``limits``: the route's pool limits (a connection past maxRequestsPerConnection is
        not taken)."""
        key = pool_key(endpoint, alpn)
        while True:
            conn = self.pick(key, limits)
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
        _, proto, peer = await self.connector.connect(endpoint, alpn, lambda: H2Upstream(self, key),
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


class H2Downstream(_Side):
    """Server end of one downstream connection: app → outbound proxy, or peer → inbound proxy."""

    client_side = False

    def __init__(self, ctx: H2Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.pool = ctx.pool
        self.goaway_sent = False
        self.last_stream_id = 0
        self.inbound_endpoint = (
            Endpoint(address=ctx.inbound_target[0], port=ctx.inbound_target[1], identity=None)
            if ctx.inbound_target else None
        )
        self.inbound_service = f"inbound|{ctx.inbound_target[1]}" if ctx.inbound_target else ""
        # Inbound: what this proxy asserts about the verified peer (None: plaintext, no peer).
        self.xfcc = xfcc_value(ctx.local_identity, ctx.peer_identity) if ctx.inbound_target else None
        self.lkeys = ("", "")  # inbound: this connection's label keys for HTTP, gRPC
        # Limits (sidecar/http/limits.py): premature resets, idle connection.
        self.lim = limits_.current()
        self.resets = limits_.ResetBudget(self.lim)
        self.head_watch = limits_.HeaderBlockWatch(self.lim, self._head_timeout)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        self.requests = 0
        self.peer_ip = ""  # the downstream's address (route matches on sourceIP): per connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        if self.ctx.registry is not None:
            self.ctx.registry.add(self)
        if self.ctx.labels is not None and self.inbound_endpoint is not None:
            self.lkeys = inbound_label_keys(self.ctx, transport)
        if self.lim.idle_timeout:
            loop = self.loop
            self.last_active = loop.time()
            self.idle_timer = loop.call_later(self.lim.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.head_watch.feed(data)  # the request-headers timeout (limits.HeaderBlockWatch)
        super().data_received(data)

    def _head_timeout(self) -> None:
        """A request header block stayed incomplete for the request-headers timeout."""
        if self.closed:
            return
        log.info("H2Downstream: closing: request headers not complete after %gs",
                 self.lim.request_headers_timeout)
        self.ctx.stats.protocol_error()
        self.codec.send_goaway()
        self.close()

    def _idle_check(self) -> None:
        """Graceful GOAWAY once no stream was open for the idle timeout (Envoy's idle_timeout)."""
        self.idle_timer = None
        if self.closed:
            return
        loop = self.loop
        left = self.lim.idle_timeout - (loop.time() - self.last_active)
        if self.streams:
            left = self.lim.idle_timeout
        elif left <= 0:
            self.drain()
            self.close()
            return
        self.idle_timer = loop.call_later(left, self._idle_check)

    def _on_downstream_reset(self, ev: ev_.StreamReset) -> None:
        if self.resets.close(ev.stream_id, reset_by_peer=True):
            self._too_many_resets()
            return
        self._on_reset(ev)

    def _too_many_resets(self) -> None:
        """Envoy ≥ 1.27.1: a connection whose streams are mostly reset early is closed."""
        log.info("H2Downstream: closing after %d premature stream resets", self.resets.premature)
        self.ctx.stats.protocol_error()
        self.drain()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.head_watch.cancel()
        if self.ctx.registry is not None:
            self.ctx.registry.discard(self)
        if self.ctx.closed is not None:  # the connection's one close count
            self.ctx.closed()
        super().connection_lost(exc)

    def close_if_idle(self) -> None:
        """Draining (the runtime calls this on every open downstream): graceful GOAWAY."""
        self.drain()

    def in_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.req

    def out_pipe(self, ex: _Exchange) -> _Pipe:
        return ex.resp

    def _on_downstream_protocol_error(self, ev: ev_.ProtocolError) -> None:
        self.ctx.stats.protocol_error()  # remora_downstream_protocol_errors_total
        self._on_protocol_error(ev)

    def drain(self) -> None:
        """Graceful GOAWAY: streams opened so far finish, new ones are refused."""
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self.codec.send_goaway()
        self.last_stream_id = self.codec.last_stream_id
        self.want_send()
        if not self.streams:
            self.close()

    def drop(self, stream_id: int | None) -> None:
        super().drop(stream_id)
        if stream_id is not None:
            self.resets.close(stream_id, reset_by_peer=False)
        if not self.streams:
            self.last_active = self.loop.time()
            if self.goaway_sent or self.goaway_received:
                self.close()

    def _on_request(self, ev: ev_.RequestHead) -> None:
        sid = ev.stream_id
        if not self.goaway_sent and self.ctx.draining():
            self.drain()
        if self.goaway_sent and sid > self.last_stream_id:
            self.reset(sid, REFUSED_STREAM)
            return
        refused = limits_.h2_request_refusal(ev, self.lim)  # on the headers as the client sent
        inbound = self.inbound_endpoint is not None
        headers = ev.headers = request_headers(ev.headers, inbound, self.xfcc)
        method, path, authority = ev.method, ev.path, ev.authority
        ex = _Exchange(self, sid, ev)
        ex.service = authority.decode("ascii", "replace")
        for name, value in headers:
            if name == b"content-type":
                ex.grpc = replies.is_grpc(value)
                break
        self.streams[sid] = ex
        if ev.end_stream:
            ex.req.ended = True
        self.resets.open(sid)
        self.requests += 1
        if self.requests == self.lim.max_requests_per_connection:  # the last one: GOAWAY
            self.drain()
        if refused is not None:  # over the header limits, no authority, CONNECT
            ex.local_reply(*refused)
            return
        ctx = self.ctx
        ex.method, ex.path, ex.req_headers, ex.protocol = method, path, headers, "HTTP/2"
        if ctx.tracer is not None:
            headers = ev.headers = h2_rewrite(
                headers, ex.trace(ctx.tracer, headers, method, path, "HTTP/2"))
        if self.inbound_endpoint is not None:
            ex.service = self.inbound_service  # named like the HTTP/1.1 inbound side
            ex.lkey = self.lkeys[ex.grpc]
            ex.upstream = self.inbound_endpoint
            denied = authorize(ctx, method, path, authority, headers)
            if denied is not None:
                ex.local_reply(denied.status, denied.message)
                return
            endpoint, alpn = self.inbound_endpoint, "h2"
        else:
            endpoint = self._route(ex, method, path, headers)
            if endpoint is not None:
                ex.dispatch(endpoint)
            return
        up = self.pool.pick(pool_key(endpoint, alpn))
        if up is not None:
            ex.attach(up)
        else:
            ex.task = self.loop.create_task(ex.connect(self.pool, endpoint, alpn))

    def _route(self, ex: _Exchange, method: bytes, path: bytes,
               headers: list[tuple[bytes, bytes]]) -> Endpoint | None:
        """Outbound: the exchange's plan (route decision and policies); None when it was
        answered locally or will be sent after a fault delay."""
        plan = plan_outbound(self.ctx, method, path, headers, grpc=ex.grpc,
                             source_ip=self.peer_ip,
                             authority=ex.head.authority if ex.head else None)
        ex.plan = plan
        for flag in plan.flags:
            ex.add_flag(flag)
        if plan.service:
            ex.service = plan.service
            ex.connect_timeout = plan.connect_timeout
        loop = self.loop
        proto = GRPC if ex.grpc else HTTP
        if plan.status or plan.endpoint is None:
            port = self.ctx.outbound_port
            ex.route_to(None, plan.service or (port.service if port is not None else ""), proto)
            if plan.delay:
                ex.timer = loop.call_later(plan.delay, ex.local_reply, plan.status, plan.message,
                                           plan.reply_headers)
            else:
                ex.local_reply(plan.status or 503, plan.message, plan.reply_headers)
            return None
        ex.route_to(plan.endpoint, plan.service, proto)
        if plan.changed:
            head = ex.head
            assert head is not None
            head.path, head.authority = plan.path, plan.authority
            head.headers = [(k, v) for k, v in plan.headers if not k.startswith(b":")]
        ex.replay = []
        ex.mirror_pending = plan.mirror_cluster is not None
        if ex.mirror_pending and ex.req.ended:
            ex.mirror()
        if plan.timeout:
            ex.timer = loop.call_later(plan.delay + plan.timeout, ex.on_timeout)
        if plan.delay:
            loop.call_later(plan.delay, ex.dispatch, plan.endpoint)
            return None
        return plan.endpoint

    def _on_request_data(self, ev: ev_.Data) -> None:
        ex = self.streams.get(ev.stream_id)
        if ex is not None and ex.replay is not None:
            ex.capture(ev.data)
        self._on_data(ev)

    def _on_request_ended(self, ev: ev_.EndOfMessage) -> None:
        self._on_ended(ev)
        ex = self.streams.get(ev.stream_id)
        if ex is not None and ex.mirror_pending:
            ex.mirror()

    def _on_client_goaway(self, ev: ev_.GoAway) -> None:
        """The app/peer will open no more streams; let the open ones finish, then close."""
        self.goaway_received = True
        if not self.streams or ev.code != NO_ERROR:
            self.close()

    _handlers = {
        **_Side._handlers,
        ev_.RequestHead: _on_request,
        ev_.Data: _on_request_data,
        ev_.EndOfMessage: _on_request_ended,
        ev_.GoAway: _on_client_goaway,
        ev_.ProtocolError: _on_downstream_protocol_error,
        ev_.StreamReset: _on_downstream_reset,
    }
