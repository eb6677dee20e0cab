"""HTTP/1.1 relay on httptools: one downstream connection, pooled upstream connections.

Bodies are streamed: each chunk the parser hands over is written on at once (re-framed:
Content-Length bodies keep their length, chunked bodies are re-chunked), and when the other
side's transport buffer passes its high-water mark the reading side is paused. Requests the
proxy cannot vouch for (conflicting or malformed framing, oversized heads, garbage) get a 400
and never reach the upstream; the connection is then closed.

Pipelined requests are served one at a time: parser events of a later request are kept in a
backlog (at most one read's worth, reading is paused meanwhile) and replayed when the current
response is done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from control_plane.api.model import Endpoint, OutboundPort

from .http import limits as limits_
from .http import mirror as mirror_copy
from .http import replies
from .http.exchange import (
    NO_FLAGS,
    Authorizer,
    Exchange,
    authorize,
    current_router,
    inbound_label_keys,
)
from .http.h1 import (
    MAX_RESPONSE_HEAD_BYTES,
    BadRequest,
    HeaderOverflow,
    absolute_form,
    connect_refused,
    framing_header,
)
from .http.headers import CONN_KEYWORDS as _CONN_KEYWORDS
from .http.headers import HOP_BY_HOP, MESH_OWNED, request_id, xfcc_value
from .http.policy import MAX_REPLAY_BYTES, Plan, h1_head, plan_outbound
from .routing import Router
from .stats import INBOUND, OUTBOUND, Stats
from .tls import ALPN_H1
from .tracing import h1_rewrite
from .traffic import retry
from .traffic.flags import DC, UC, UF, UT
from .traffic.retry import Outcome
from .upstream import Connector, UpstreamError, pool_idle_timeout

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .labels import Labeler
    from .tracing import Tracer

log = logging.getLogger("remora.http1")
POOL_MAX_IDLE = 64  # idle upstream connections kept per endpoint
HIGH_WATER = 256 * 1024

# Request headers that need a look; every other header is copied as it came.
_REQ_SPECIAL = HOP_BY_HOP | MESH_OWNED | {b"content-length", b"host", b"x-request-id"}
# Response headers that need a look (Content-Length is kept even if Connection names it).
_RESP_SPECIAL = HOP_BY_HOP | {b"content-length", b""}

# Response heads written as they came (no per-header work): these find what rules out doing
# so, on the raw head, which httptools has validated (CRLF line ends, no obs-fold, tokens).
_HOP = re.compile(rb"\r\n(?:%s)[ \t]*:" % b"|".join(sorted(HOP_BY_HOP)), re.IGNORECASE)
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:", re.IGNORECASE)
_KEEP_ALIVE = re.compile(rb"\r\nconnection:[ \t]*keep-alive[ \t]*(?=\r\n)", re.IGNORECASE)
_GRPC_STATUS = re.compile(rb"\r\ngrpc-status:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)

# Reasons the downstream is not being read (a bit mask, so independent reasons compose).
_P_BACKLOG, _P_UPSTREAM, _P_WAIT = 1, 2, 4


@dataclass
class H1Context:
    """What a downstream connection needs; built by the listener per connection."""

    direction: str
    connector: Connector
    pool: H1Pool
    stats: Stats
    draining: Callable[[], bool]
    router: Router | None = None
    outbound_port: OutboundPort | None = None
    inbound_target: tuple[str, int] | None = None
    peer_identity: str | None = None  # the downstream's SPIFFE ID (inbound over mTLS)
    local_identity: str | None = None
    service: str = ""
    registry: set | None = None  # open downstream connections, for draining idle ones
    # Outbound: the current router (a config push applies to the next request on an open
    # connection too) and the original destination that selects the service port in it.
    current_router: Callable[[], Router] | None = None
    original_dst: tuple[str, int] | None = None
    authorizer: Authorizer | None = None  # inbound: the authorization policy (None: none)
    labels: Labeler | None = None  # Istio's metric labels (None: only the remora_* series)
    tracer: Tracer | None = None  # None: tracing off, trace headers pass through untouched
    access_log: AccessLog | None = None  # None: access logs off


class _Target:
    """One routing outcome: the endpoint, timeouts, ALPN and the pool key for it."""

    __slots__ = ("endpoint", "timeout", "connect_timeout", "alpn", "key", "service", "lkey", "lgen")

    def __init__(self, endpoint: Endpoint, timeout: float | None, connect_timeout: float,
                 alpn: str, direction: str, service: str = "") -> None:
        self.endpoint = endpoint
        self.service = service  # outbound: the cluster's service host (the metric's)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.alpn = alpn
        # Inbound (from 127.0.0.6) and outbound connections to one address never mix.
        self.key = (direction, endpoint.address, endpoint.port,
                    alpn if endpoint.identity else "plain")
        # The Istio label key of requests to it, and the Labeler.generation it is good for.
        self.lkey = ""
        self.lgen = -1


def _log_callback_bug(e: Exception) -> None:
    """A parser error caused by our own callback raising is a bug: log it loudly."""
    cause = e.__context__ or e.__cause__
    if isinstance(e, httptools.HttpParserCallbackError) and not isinstance(cause, BadRequest):
        log.error("HTTP/1.1 callback failed", exc_info=cause or e)


class H1Pool:
    """Idle keep-alive upstream connections per (address, port, alpn)."""

    def __init__(self, stats: Stats) -> None:
        self.idle: dict[tuple, list[H1Upstream]] = {}
        self.stats = stats
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, key: tuple) -> H1Upstream | None:
        conns = self.idle.get(key)
        while conns:
            up = conns.pop()
            if not up.closed:
                self.stats.pool_reused += 1
                return up
        return None

    def put(self, key: tuple, up: H1Upstream, idle: float, now: float) -> None:
        """Keep ``up`` for reuse; it is closed after ``idle`` seconds unused (0: never),
        counted from ``now`` (monotonic, the loop's clock)."""
        conns = self.idle.setdefault(key, [])
        if len(conns) >= POOL_MAX_IDLE:
            up.transport.close()
            return
        up.idle_until = now + idle if idle else math.inf
        up.pool_key = key
        conns.append(up)
        self._sweep_by(up.idle_until)

    def discard(self, up: H1Upstream) -> None:
        conns = self.idle.get(up.pool_key)
        if conns and up in conns:
            conns.remove(up)

    def _sweep_by(self, when: float) -> None:
        """Have the sweeper run by ``when`` (each cluster has its own idle timeout)."""
        if when == math.inf:
            return
        sweeper = self._sweeper
        if sweeper is not None:
            if sweeper.when() <= when + 0.01:
                return
            sweeper.cancel()
        self._sweeper = asyncio.get_running_loop().call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        nxt = math.inf
        for key, conns in list(self.idle.items()):
            for up in list(conns):
                if up.idle_until <= now:
                    conns.remove(up)
                    up.transport.close()
                else:
                    nxt = min(nxt, up.idle_until)
            if not conns:
                del self.idle[key]
        self._sweep_by(nxt)

    def close_all(self) -> None:
        for conns in self.idle.values():
            for up in conns:
                up.transport.close()
        self.idle.clear()


class H1Upstream(asyncio.Protocol):
    """One upstream HTTP/1.1 connection; serves one downstream exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.down: H1Downstream | None = None
        self.closed = False
        self.idle_until = 0.0  # pooled: closed by the sweeper at this loop time
        self.pool_key: tuple = ()
        self.pool: H1Pool | None = None
        self.status = 0
        # The response head's raw bytes are kept (no per-header callback): passed on as they
        # came when no header rule applies, split into headers only when one does.
        self.data = b""  # the read being parsed
        self.mark = 0  # where in it a response may begin (-1: none may, one just ended)
        self.head_start = 0
        self.head_parts: list[bytes] | None = None  # a head begun in an earlier read
        self.started = False  # response bytes seen for the current exchange
        self.tunnel = False
        self.reused = False
        self.peer_identity: str | None = None  # the upstream's verified SPIFFE ID (mTLS)
        self.in_head = False  # parsing a response head: its bytes count towards the cap
        self.head_bytes = 0
        self.served = 0  # exchanges answered on this connection (maxRequestsPerConnection)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        down = self.down
        if down is None:  # an idle pooled connection should not talk: drop it
            self.transport.close()
            return
        if self.tunnel:
            down.transport.write(data)
            return
        self.started = True
        self.data = data
        self.mark = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:]
            if self.tunnel and rest:
                down.wbuf.append(rest)
        except httptools.HttpParserError as e:
            _log_callback_bug(e)
            log.debug("bad response from upstream: %s: %r", e, data[:200])
            self.transport.abort()
        else:
            if self.in_head:  # the head goes on past this read: keep it, bound it
                if self.head_parts is None:
                    self.head_parts = [data[self.head_start:]]
                else:
                    self.head_parts.append(data)
                self.head_bytes += len(data)
                if self.head_bytes > MAX_RESPONSE_HEAD_BYTES:
                    log.debug("response head from upstream over %d bytes", MAX_RESPONSE_HEAD_BYTES)
                    self.transport.abort()
        down.flush()

    def eof_received(self) -> bool:
        if self.tunnel and self.down is not None:
            self.down.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pool is not None:
            self.pool.discard(self)
        down = self.down
        if down is not None:
            self.down = None
            down.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.down is not None:
            self.down._pause(_P_UPSTREAM)

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down._resume(_P_UPSTREAM)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.mark < 0:  # a second response after a body in one read: none was asked for
            raise BadRequest("unsolicited response")
        self.in_head = True
        self.head_bytes = 0
        self.head_start = self.mark
        self.head_parts = None

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.status = self.parser.get_status_code()
        data, parts = self.data, self.head_parts
        if parts is None:
            end = data.find(b"\r\n\r\n", self.head_start) + 4
            head = data[self.head_start:end]
        else:  # begun in an earlier read (its terminator may straddle the reads)
            self.head_parts = None
            before = b"".join(parts)
            head = before + data
            at = head.find(b"\r\n\r\n", max(0, len(before) - 3)) + 4
            head, end = head[:at], at - len(before)
        self.mark = end  # a bodiless response (1xx, 204, 304) may be followed by the next
        if self.down is not None:
            self.down.response_head(self, head)

    def on_body(self, body: bytes) -> None:
        self.mark = -1
        down = self.down
        if down is not None:
            down.ex.resp_bytes += len(body)
            if down.resp_chunked:
                down.wbuf += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                down.wbuf.append(body)

    def on_message_complete(self) -> None:
        if self.down is not None and self.status >= 200 and not self.tunnel:
            self.down.response_done(self)


class H1Downstream(asyncio.Protocol):
    """The app's (outbound) or the peer's (inbound) HTTP/1.1 connection to this proxy."""

    def __init__(self, ctx: H1Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Inbound over mTLS: who the client is, told to the app on every request.
        xfcc = xfcc_value(ctx.local_identity, ctx.peer_identity)
        self.xfcc = (b"x-forwarded-client-cert: %s\r\n" % xfcc
                     if ctx.direction == INBOUND and xfcc else b"")
        self.paused = 0
        self.closed = False
        self.backlog: list[tuple] | None = None
        # The request being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.host = b""
        # Limits (sidecar/http/limits.py): the head being parsed, idle and slowloris timers.
        self.lim = lim = limits_.current()
        self.max_head, self.max_headers = lim.max_head_bytes, lim.max_headers_count  # hot path
        self.in_head = False  # between a request's first byte and its complete head
        self.head_pending = 0  # bytes read while the head was incomplete (httptools buffers)
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_active = time.monotonic()
        self.requests = 0
        self.head_count = 0
        # The exchange in flight.
        self.busy = False
        self.pending_dispatch = False
        self.method = b""
        self.req_head = b""
        self.req_chunked = False
        self.req_body: list[bytes] = []
        self.req_done = False
        self.req_has_body = False
        self.keep_alive = True
        self.upgrade = False
        self.tunnel_bytes = b""
        self.up: H1Upstream | None = None
        self.decision_key: tuple = ()
        # Where requests on this connection go, while it cannot change: inbound always,
        # outbound while the router is current and the port is fixed (Router.is_fixed).
        self.target: _Target | None = None
        self.target_router: Router | None = None
        # The exchange in flight: its accounting (one object per connection, reused).
        self.ex = Exchange(ctx)
        self.resp_chunked = False
        self.resp_started = False
        self.resp_until_close = False
        self.resp_status = 0
        self.http10 = False
        self.timer: asyncio.TimerHandle | None = None  # a fault delay
        # The route timeout: a deadline per exchange, one timer per connection that is re-armed
        # only when it fires early or a shorter deadline comes (no timer per request).
        self.deadline = 0.0  # monotonic; 0: none running
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.deadline_due = 0.0  # when deadline_timer fires
        self.tunnel = False
        self.eof = False  # the client half-closed
        self.wbuf: list[bytes] = []  # to the downstream, written by flush()
        # Route policies of the exchange in flight (sidecar/http/policy.py); None: none apply.
        self.plan: Plan | None = None
        self.replay: list[bytes] | None = None  # the request body so far, for retries/mirror
        self.replay_size = 0
        self.mirror_pending = False
        self.try_timer: asyncio.TimerHandle | None = None
        self.ubuf: list[bytes] = []  # to the current upstream, written by flush()

    # -- connection events ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]
        if self.ctx.registry is not None:
            self.ctx.registry.add(self)
        if self.ctx.labels is not None and self.ctx.direction == INBOUND:
            self.ex.lkey = inbound_label_keys(self.ctx, transport)[0]
        if self.lim.idle_timeout:
            self.idle_timer = asyncio.get_running_loop().call_later(
                self.lim.idle_timeout, self._idle_check)

    def close_if_idle(self) -> None:
        """Draining: close a keep-alive connection that has no request in flight."""
        if not self.busy and not self.tunnel and self.backlog is None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.up is not None:
                self.up.transport.write(data)
            return
        if self.upgrade:  # bytes after an Upgrade request wait for the 101
            self.tunnel_bytes += data
            self._pause(_P_WAIT)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.tunnel_bytes = data[e.args[0]:]
            self._pause(_P_WAIT)
        except (httptools.HttpParserError, BadRequest) as e:
            _log_callback_bug(e)
            self._bad_request(e)
            return
        if self.in_head:  # httptools holds an unfinished header itself: bound what it may
            self._head_incomplete(len(data))
            if self.closed or self.transport.is_closing():
                return
        if self.pending_dispatch:
            self.pending_dispatch = False
            self._dispatch()
        self.flush()

    def flush(self) -> None:
        """Write what this turn produced, one write per side (one TLS record, one syscall)."""
        if self.wbuf:
            parts, self.wbuf = self.wbuf, []
            if not self.transport.is_closing():
                self.transport.write(b"".join(parts))  # one item: itself, no copy
        if self.ubuf:
            parts, self.ubuf = self.ubuf, []
            up = self.up
            if up is not None and not up.transport.is_closing():
                up.transport.write(b"".join(parts))

    def eof_received(self) -> bool:
        if self.tunnel and self.up is not None:
            if self.up.transport.can_write_eof():
                self.up.transport.write_eof()
                return True
            self.up.transport.close()
            return False
        # The client half-closed after sending: answer what it sent, then close.
        self.eof = True
        return self.busy or self.backlog is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        for t in (self.head_timer, self.idle_timer, self.deadline_timer):
            if t is not None:
                t.cancel()
        self._drop_plan()  # the exchange cannot finish: give back its pool slot
        if self.busy and not self.ex.finished:  # the client left mid-exchange: count it
            self.ex.add_flag(DC)
            self.ex.done(self.resp_status if self.resp_started else 0)
        self.ctx.stats.conn_closed(self.ctx.direction)
        if self.ctx.registry is not None:
            self.ctx.registry.discard(self)
        up = self.up
        if up is not None:  # the exchange cannot finish: do not reuse that connection
            self.up = None
            up.down = None
            up.transport.abort()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and not self.up.closed:
            self.up.transport.resume_reading()

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- parser callbacks (queued into the backlog while an earlier exchange runs) ---------
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_pending = 0
        self.head_count = 0
        self.head_bytes = 0
        if self.busy or self.backlog is not None:
            if self.backlog is None:
                self.backlog = []
                self._pause(_P_BACKLOG)
            self.backlog.append(("begin",))
            return
        self.url = b""
        self.headers = []
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.max_head:
            raise HeaderOverflow(f"request line longer than {self.lim.max_request_headers_kb} KiB")
        if self.backlog is not None:
            self.backlog.append(("url", url))
        else:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        self.head_pending = 0  # what httptools held is now counted in head_bytes
        self.head_count = n = self.head_count + 1
        if self.backlog is not None:
            self.backlog.append(("header", name, value))
        else:
            self.headers.append((name, value))
        if self.head_bytes > self.max_head or n > self.max_headers:
            raise HeaderOverflow(limits_.head_overflow(n, self.head_bytes, self.lim)
                                 or "request headers too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        p = self.parser
        args = (p.get_method(), p.get_http_version(), p.should_keep_alive(), p.should_upgrade())
        if self.backlog is not None:
            self.backlog.append(("head", *args))
        else:
            self._head(*args)

    def on_body(self, body: bytes) -> None:
        if self.backlog is not None:
            self.backlog.append(("body", body))
        else:
            self._body(body)

    def on_message_complete(self) -> None:
        if self.backlog is not None:
            self.backlog.append(("done",))
        else:
            self._done()

    # -- request side --------------------------------------------------------------------
    def _begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0

    def _head(self, method: bytes, version: str, keep_alive: bool, upgrade: bool) -> None:
        ctx = self.ctx
        cl = None
        chunked = False
        hosts = 0
        self.host = b""
        has_id = False
        if method == b"CONNECT":
            raise connect_refused()
        authority = None
        if self.url[:1] != b"/":  # absolute-form: its authority is the Host (RFC 9112 3.2.2)
            authority, self.url = absolute_form(self.url)
        out = [b"%s %s HTTP/1.1\r\n" % (method, self.url)]
        conn_tokens: set[bytes] = set()
        for name, value in self.headers:
            lname = name.lower()
            if lname not in _REQ_SPECIAL:  # the common case: an end-to-end header
                out.append(b"%s: %s\r\n" % (name, value))
                continue
            if lname == b"content-length" or lname == b"transfer-encoding":
                cl, chunked = framing_header(lname, value, cl, chunked)
            elif lname == b"connection":
                conn_tokens.update(t.strip().lower() for t in value.split(b","))
            elif lname == b"upgrade":
                if upgrade:
                    out.append(b"%s: %s\r\n" % (name, value))
            elif lname in MESH_OWNED:
                if ctx.direction != INBOUND:  # inbound: only this proxy may assert the client
                    out.append(b"%s: %s\r\n" % (name, value))
            elif lname not in HOP_BY_HOP:
                if lname == b"host":
                    hosts += 1
                    self.host = value
                    if authority is not None:
                        value = authority
                else:
                    has_id = True
                out.append(b"%s: %s\r\n" % (name, value))
        conn_tokens -= _CONN_KEYWORDS
        if conn_tokens:  # rare: headers named in Connection are hop-by-hop too
            out = [out[0], *(h for h in out[1:]
                             if h.split(b":", 1)[0].lower() not in conn_tokens)]
        if cl is not None and chunked:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if hosts > 1:
            raise BadRequest("repeated Host header")
        if authority is not None:
            if not hosts:
                out.append(b"host: %s\r\n" % authority)
            self.host = authority
        elif not self.host:
            if version != "1.0" or hosts:  # HTTP/1.1 requires a Host (Envoy: 400), not empty
                raise BadRequest("missing Host header")
            # HTTP/1.0 may omit it, but the request goes on as HTTP/1.1, which may not.
            dst = ctx.inbound_target or ctx.original_dst or ("localhost", 80)
            addr = dst[0].encode()
            self.host = b"[%s]:%d" % (addr, dst[1]) if b":" in addr else b"%s:%d" % (addr, dst[1])
            out.append(b"host: %s\r\n" % self.host)
        self.requests += 1
        cap = self.lim.max_requests_per_connection
        if cap and self.requests >= cap:  # the last one: tell the client, then close
            keep_alive = False
        rid = b""
        if not has_id:
            rid = request_id()
            out.append(b"x-request-id: %s\r\n" % rid)
        if self.xfcc:
            out.append(self.xfcc)
        if chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        elif cl is not None:
            out.append(b"content-length: %s\r\n" % cl)
        if upgrade:
            out.append(b"connection: upgrade\r\n")
        ex = self.ex
        protocol = "HTTP/1.0" if version == "1.0" else "HTTP/1.1"
        if ctx.tracer is not None:
            out = h1_rewrite(out, ex.trace(ctx.tracer, self.headers, method, self.url, protocol))
        out.append(b"\r\n")
        self.busy = True
        self.method = method
        self.req_head = b"".join(out)
        self.req_chunked = chunked
        self.req_has_body = chunked or (cl is not None and cl != b"0")
        self.req_body = []
        self.req_done = False
        self.keep_alive = keep_alive
        self.http10 = version == "1.0"
        self.upgrade = upgrade
        self.resp_started = False
        # Exchange.restart, inlined (this is the per-request hot path), and what the access
        # log prints of the request.
        ex.service, ex.peer, ex.started, ex.finished = (ctx.service, ctx.peer_identity,
                                                         time.monotonic(), False)
        ex.flags, ex.req_bytes, ex.resp_bytes, ex.upstream, ex.request_id = NO_FLAGS, 0, 0, None, rid
        ex.method, ex.path, ex.req_headers, ex.protocol = method, self.url, self.headers, protocol
        self.pending_dispatch = True

    def _body(self, body: bytes) -> None:
        self.ex.req_bytes += len(body)
        if self.replay is not None:
            self.replay_size += len(body)
            if self.replay_size > MAX_REPLAY_BYTES:
                self.replay = None  # too large to keep: no retry, no mirror
            else:
                self.replay.append(body)
        up = self.up
        if up is None:
            self.req_body.append(body)
            self._pause(_P_WAIT)  # at most one read buffered while connecting
            return
        if self.req_chunked:
            self.ubuf += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.ubuf.append(body)

    def _done(self) -> None:
        self.req_done = True
        if self.mirror_pending:
            self._mirror()
        if self.up is not None and self.req_chunked:
            self.ubuf.append(b"0\r\n\r\n")

    # -- routing and upstream ------------------------------------------------------------
    def _route(self) -> _Target | None:
        """Where the current request goes; None when it was answered locally."""
        ctx = self.ctx
        if ctx.direction != OUTBOUND:
            if self.target is None:
                self.target = _Target(Endpoint(*ctx.inbound_target), None, 5.0, "http/1.1",
                                      INBOUND)
            if ctx.authorizer is not None:
                denied = authorize(ctx, self.method, self.url, self.host, self.headers)
                if denied is not None:
                    self._local_reply(denied.status, denied.message)
                    return None
            return self.target
        router = ctx.router
        if ctx.current_router is not None and ctx.current_router() is not router:
            router = current_router(ctx)  # a config push: the port is looked up again
        if self.target is not None and self.target_router is router:
            return self.target
        peer = self.transport.get_extra_info("peername")
        plan = plan_outbound(ctx, self.method, self.url, self.headers, source_ip=peer[0] if peer else "")
        for flag in plan.flags:
            self.ex.add_flag(flag)
        if plan.service:
            self.ex.service = plan.service
        if plan.status or plan.endpoint is None:
            port = ctx.outbound_port
            self.ex.route_to(None, plan.service or (port.service if port is not None else ""))
            if plan.delay:
                self._pause(_P_WAIT)
                self.timer = asyncio.get_running_loop().call_later(
                    plan.delay, self._delayed_reply, plan.status, plan.message, plan.reply_headers)
            else:
                self._local_reply(plan.status or 503, plan.message, plan.reply_headers)
            plan.finish()
            return None
        self.plan = plan
        self.req_head = h1_head(self.req_head, plan)
        self.replay, self.replay_size = list(self.req_body), sum(map(len, self.req_body))
        if plan.mirror_cluster is not None:
            self.mirror_pending = True
            if self.req_done:
                self._mirror()
        target = _Target(plan.endpoint, plan.timeout, plan.connect_timeout, ALPN_H1, OUTBOUND,
                         plan.service)
        if router is not None and router.is_fixed(ctx.outbound_port) and not plan.delay:
            self.target, self.target_router = target, router
        if plan.delay:
            self._pause(_P_WAIT)
            self.timer = asyncio.get_running_loop().call_later(plan.delay, self._delayed_send, target)
            return None
        return target

    def _delayed_reply(self, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.timer = None
        if not self.closed and self.busy:
            self._local_reply(status, message, headers)
            self.flush()

    def _delayed_send(self, target: _Target) -> None:
        self.timer = None
        if not self.closed and self.busy:
            self._send(target)
            self.flush()

    def _mirror(self) -> None:
        self.mirror_pending = False
        plan = self.plan
        if plan is None or plan.mirror_cluster is None or plan.router is None or self.replay is None:
            return
        mirror_copy.send(self.ctx.connector, plan.router, plan.mirror_cluster, self.method, plan.path,
                         plan.authority, self.headers, b"".join(self.replay))

    def _dispatch(self) -> None:
        self.ex.flags = NO_FLAGS  # the Exchange object is reused per connection
        target = self._route()
        if target is None:
            return
        ex, labels = self.ex, self.ctx.labels
        if labels is not None and target.lgen == labels.generation:
            # Exchange.route_to, inlined for a target this connection keeps: its label key
            # was looked up for an earlier request under the same labels.
            ex.upstream = target.endpoint
            if target.service:
                ex.service = target.service
            ex.lkey = target.lkey
        else:
            ex.route_to(target.endpoint, target.service)
            if labels is not None:
                target.lkey, target.lgen = ex.lkey, labels.generation
        if target.timeout:  # _send, inlined: the per-request hot path
            self._set_deadline(self.ex.started + target.timeout)
        self._attempt(target)

    def _send(self, target: _Target) -> None:
        self.ex.route_to(target.endpoint, target.service)
        if target.timeout:
            self._set_deadline(time.monotonic() + target.timeout)
        self._attempt(target)

    def _set_deadline(self, at: float) -> None:
        self.deadline = at
        if self.deadline_timer is not None:
            if self.deadline_due <= at:  # it fires in time: it re-arms itself then
                return
            self.deadline_timer.cancel()
        self.deadline_due = at
        self.deadline_timer = asyncio.get_running_loop().call_later(
            at - time.monotonic(), self._deadline_check)

    def _deadline_check(self) -> None:
        self.deadline_timer = None
        if self.closed or not self.deadline:
            return
        left = self.deadline - time.monotonic()
        if left > 0:  # a later exchange's deadline: wait for it
            self.deadline_due = self.deadline
            self.deadline_timer = asyncio.get_running_loop().call_later(left, self._deadline_check)
            return
        self._timed_out()

    def _attempt(self, target: _Target) -> None:
        """One try: from the pool or a new connection (retries come back here)."""
        plan = self.plan
        self.ex.upstream = target.endpoint  # telemetry: the endpoint of the last try
        if plan is not None:
            plan.attempt_started()
            if plan.per_try:
                self.try_timer = asyncio.get_running_loop().call_later(plan.per_try, self._try_timed_out)
        self.decision_key = key = target.key
        up = None if self.upgrade else self.ctx.pool.get(key)
        if up is not None and plan is not None and plan.pool is not None:
            # Over a maxRequestsPerConnection set after it was pooled: closed, as Envoy drains
            # the old cluster's connections.
            while up is not None and plan.pool.connection_exhausted(up.served):
                up.transport.close()
                up = self.ctx.pool.get(key)
        if up is not None:
            up.reused = True
            self._attach(up)
            return
        self._pause(_P_WAIT)
        asyncio.get_running_loop().create_task(
            self._connect(target.endpoint, target.alpn, target.connect_timeout))

    async def _connect(self, endpoint: Endpoint, alpn: str, timeout: float) -> None:
        try:
            _, up, peer = await self.ctx.connector.connect(endpoint, alpn, H1Upstream, timeout)
        except UpstreamError as e:
            if not self.closed and self.busy and not self._retry(Outcome(connect_failure=True)):
                self.ex.add_flag(UF)
                self._local_reply(503, f"upstream connect error: {e}")
            return
        except Exception:
            log.exception("connecting upstream %s:%d failed", endpoint.address, endpoint.port)
            if not self.closed and self.busy:
                self._local_reply(502, "upstream connect error")
            return
        if self.closed or not self.busy:
            up.transport.close()
            return
        up.pool = self.ctx.pool
        up.reused = False
        up.peer_identity = peer
        self._attach(up)
        self.flush()

    def _attach(self, up: H1Upstream) -> None:
        self.up = up
        if self.ctx.direction == OUTBOUND:  # the metric names who answered: the upstream
            self.ex.peer = up.peer_identity
        up.down = self
        up.started = False
        up.tunnel = False
        buf = self.ubuf
        buf.append(self.req_head)
        for chunk in self.req_body:
            if self.req_chunked:
                buf += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                buf.append(chunk)
        self.req_body = []
        if self.req_done and self.req_chunked:
            buf.append(b"0\r\n\r\n")
        # Written by the caller's flush (data_received's, or the timer's or connect's own).
        if self.paused & _P_WAIT:
            self._resume(_P_WAIT)

    def upstream_lost(self, up: H1Upstream) -> None:
        """The upstream connection closed during our exchange."""
        log.debug("upstream lost (started=%s reused=%s resp_started=%s)", up.started, up.reused,
                  self.resp_started)
        self.up = None
        if self.tunnel:
            self.flush()
            self.transport.close()
            return
        if not self.resp_started:
            if up.reused and not up.started and not self.req_has_body:
                # A pooled connection the server had just closed: try once on a fresh one.
                self._dispatch_retry()
                self.flush()
                return
            if self._retry(Outcome(reset=True)):
                return
            self.ex.add_flag(UC)
            self._local_reply(502, replies.UPSTREAM_RESET)
            return
        if self.resp_until_close:
            self._finish_response(reusable=False)
            self.flush()
        else:  # cut short: the client sees the connection reset
            self.ex.add_flag(UC)
            self.ex.done(self.resp_status)
            self.transport.abort()

    def _dispatch_retry(self) -> None:
        self._cancel_timer()
        self.ctx.pool.idle.pop(self.decision_key, None)  # the rest are likely stale too
        if self.plan is not None:  # a policy exchange keeps its plan: same route, same slot
            self.plan.attempt_done(None)
            self.req_body = list(self.replay or ())
            self._send(_Target(self.plan.endpoint, self.plan.timeout, self.plan.connect_timeout,
                               ALPN_H1, OUTBOUND))
            return
        self._dispatch()

    def _retry(self, outcome: Outcome) -> bool:
        """After a failed try: schedule the next one (True) or let the caller answer (False)."""
        plan = self.plan
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if plan is None:
            plan = self._late_plan(outcome)
            if plan is None:
                return False
        wait = plan.retry(outcome, replayable=self.replay is not None)
        if wait is None:
            for flag in plan.flags:
                if flag not in self.ex.flags.split(","):
                    self.ex.add_flag(flag)
            return False
        self.req_body = list(self.replay or ())
        target = _Target(plan.endpoint, None, plan.connect_timeout, ALPN_H1, OUTBOUND)
        self._pause(_P_WAIT)
        # Held in try_timer so that the end of this exchange cancels it, whatever ends it.
        self.try_timer = asyncio.get_running_loop().call_later(wait, self._retry_now, target)
        return True

    def _late_plan(self, outcome: Outcome) -> Plan | None:
        """A connection reusing a fixed target skips the plan per request (``_route``); when
        an attempt fails in a way the port's retry policy (Istio's default unless the route
        sets one) retries, the plan is made now, so later requests on a connection are
        retried like its first. Bodiless requests only: their bodies were not kept."""
        ctx, port = self.ctx, self.ctx.outbound_port
        if (self.target is None or ctx.direction != OUTBOUND or port is None or self.req_has_body
                or self.upgrade or not self.busy):
            return None
        if not retry.retriable(retry.policy(port.routes[0] if port.routes else None), outcome):
            return None
        peer = self.transport.get_extra_info("peername")
        plan = plan_outbound(ctx, self.method, self.url, self.headers,
                             source_ip=peer[0] if peer else "")
        if plan.status or plan.endpoint is None:
            plan.finish()
            return None
        plan.attempt_started()  # the attempt that failed, so that its end is counted once
        self.plan, self.replay, self.replay_size = plan, [], 0
        return plan

    def _retry_now(self, target: _Target) -> None:
        self.try_timer = None
        if not self.closed and self.busy:
            self._attempt(target)
            self.flush()

    def _abandon_upstream(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.down = None
            up.transport.abort()

    def _try_timed_out(self) -> None:
        self.try_timer = None
        if self.resp_started or not self.busy:
            return
        self._abandon_upstream()
        if not self._retry(Outcome(timed_out=True, reset=True)):
            self.ex.add_flag(UT)
            self._local_reply(504, replies.UPSTREAM_TIMEOUT)

    def _timed_out(self) -> None:
        self.deadline = 0.0
        self.ex.add_flag(UT)
        up = self.up
        if up is not None:
            self.up = None
            up.down = None
            up.transport.abort()
        if not self.resp_started:
            self._local_reply(504, replies.UPSTREAM_TIMEOUT)
        else:
            self.ex.done(self.resp_status)
            self.transport.abort()

    def _cancel_timer(self) -> None:
        """The exchange's timers stop: the fault delay's, and the route deadline."""
        self.deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- response side -------------------------------------------------------------------
    def response_head(self, up: H1Upstream, head: bytes) -> None:
        status = up.status
        plan = self.plan
        if (status >= 200 and status != 101 and not self.http10 and head[:9] == b"HTTP/1.1 "
                and (plan is None or not plan.response_policy)):
            # The common case: no header rule applies, the head goes on as it came.
            head = _KEEP_ALIVE.sub(b"", head, 1)  # true of our hop too, but hop-by-hop
            if _HOP.search(head) is None and _LENGTH.search(head) is not None:
                self._pass_head(up, status, head)
                return
        self._rebuild_head(up, status, head)

    def _pass_head(self, up: H1Upstream, status: int, head: bytes) -> None:
        """A Content-Length response head without hop-by-hop headers, written unchanged."""
        if self.plan is not None or (status >= 400 and self.target is not None):
            if self.try_timer is not None:
                self.try_timer.cancel()
                self.try_timer = None
            grpc = _GRPC_STATUS.search(head)
            if self._retry(Outcome(status=status, grpc_status=int(grpc[1]) if grpc else None)):
                self._abandon_upstream()
                return
        self.resp_started = True
        self.resp_status = status
        self.deadline = 0.0  # the route timeout no longer runs (_cancel_timer, inlined)
        if self.timer is not None:
            self._cancel_timer()
        self.resp_chunked = False
        self.resp_until_close = False
        if self.upgrade or not self.keep_alive or self.ctx.draining():
            self.keep_alive = False
            head = head[:-2] + b"connection: close\r\n\r\n"
        self.wbuf.append(head)
        if self.method == b"HEAD":  # httptools would wait for a body: end here, drop the conn
            up.down = None
            self.up = None
            up.transport.close()
            self._finish_response(reusable=False)

    def _rebuild_head(self, up: H1Upstream, status: int, raw: bytes) -> None:
        """Any other head: hop-by-hop headers removed, re-framed, the route's header rules."""
        lines = raw[:-4].split(b"\r\n")
        reason = lines[0].split(b" ", 2)[2] if lines[0].count(b" ") >= 2 else b""
        up_headers = [(n, v.strip(b" \t")) for n, _, v in (h.partition(b":") for h in lines[1:])]
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        interim = 100 <= status < 200 and status != 101
        if status == 101 and self.upgrade:
            for name, value in up_headers:
                out.append(b"%s: %s\r\n" % (name, value))
            out.append(b"\r\n")
            self.wbuf.append(b"".join(out))
            self._start_tunnel(up)
            return
        if interim:
            for name, value in up_headers:
                out.append(b"%s: %s\r\n" % (name, value))
            out.append(b"\r\n")
            self.wbuf.append(b"".join(out))
            return
        headers = up_headers
        if self.plan is not None or (status >= 400 and self.target is not None):
            if self.try_timer is not None:
                self.try_timer.cancel()
                self.try_timer = None
            grpc = next((v for k, v in headers if k.lower() == b"grpc-status"), None)
            outcome = Outcome(status=status, grpc_status=int(grpc) if grpc and grpc.isdigit() else None)
            if self._retry(outcome):
                self._abandon_upstream()
                return
            if self.plan is not None:  # made just now, if the failure was a retriable one
                headers = self.plan.response_headers(headers)
        self.resp_started = True
        self.resp_status = status
        self.deadline = 0.0  # the route timeout no longer runs (_cancel_timer, inlined)
        if self.timer is not None:
            self._cancel_timer()
        cl = None
        chunked = False
        conn_tokens: set[bytes] = set()
        for name, value in headers:  # one pass; headers named in Connection are rare
            lname = name.lower()
            if lname not in _RESP_SPECIAL:
                out.append(b"%s: %s\r\n" % (name, value))
            elif lname == b"content-length":
                cl = value
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"connection":
                conn_tokens.update(t.strip().lower() for t in value.split(b","))
        conn_tokens -= _RESP_SPECIAL
        if conn_tokens:
            out = [out[0], *(h for h in out[1:]
                             if h.split(b":", 1)[0].lower() not in conn_tokens)]
        no_body = self.method == b"HEAD" or status in (204, 304)
        self.resp_chunked = False
        self.resp_until_close = False
        if self.http10 and not no_body and (chunked or cl is None):
            # An HTTP/1.0 client knows no chunked encoding: the body ends with the connection.
            self.keep_alive = False
            if cl is None and not chunked:
                self.resp_until_close = True
        elif chunked and not no_body:
            self.resp_chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        elif cl is not None:
            out.append(b"content-length: %s\r\n" % cl)
        elif not no_body:  # body until the upstream closes: re-frame as chunked
            self.resp_chunked = True
            self.resp_until_close = True
            out.append(b"transfer-encoding: chunked\r\n")
        if self.upgrade or not self.keep_alive or self.ctx.draining():
            self.keep_alive = False
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self.wbuf.append(b"".join(out))
        if self.method == b"HEAD":  # httptools would wait for a body: end here, drop the conn
            up.down = None
            self.up = None
            up.transport.close()
            self._finish_response(reusable=False)

    def response_done(self, up: H1Upstream) -> None:
        reusable = up.parser.should_keep_alive() and self.req_done and not self.upgrade
        self._finish_response(reusable)

    def _finish_response(self, reusable: bool) -> None:
        up = self.up
        if up is not None:
            up.served += 1  # counted whatever the limit: a later limit applies to it too
            plan = self.plan
            if plan is not None and plan.pool is not None and plan.pool.connection_exhausted(up.served):
                reusable = False
        if self.resp_chunked:
            self.wbuf.append(b"0\r\n\r\n")
        self.up = None
        keep, idle = None, 0.0
        if up is not None:
            up.down = None
            if reusable and not up.closed:
                up.transport.resume_reading()  # it may have been paused by our backpressure
                keep = up
                idle = pool_idle_timeout(self.plan.cluster if self.plan else None)  # before the plan goes
            else:
                up.transport.close()
        self._exchange_done(self.resp_status, keep, idle)

    def _drop_plan(self, status: int = 0) -> None:
        """The exchange is over, however it ended: settle its route policies (once)."""
        plan = self.plan
        if plan is not None:
            self.plan = None
            if plan._active is not None and self.resp_status and status == self.resp_status:
                plan.attempt_done(status)
            plan.finish()
            self.replay = None
            self.mirror_pending = False
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def _exchange_done(self, status: int, keep: H1Upstream | None = None, idle: float = 0.0) -> None:
        """The exchange is over: counted once; ``keep`` goes back to the pool first (one
        clock read serves the count, the idle timer and the pool)."""
        if self.plan is not None or self.try_timer is not None:
            self._drop_plan(status)
        ex = self.ex
        if not ex.done(status):
            ex.ended = time.monotonic()  # counted already (an early exit): still, now
        self.last_active = ex.ended
        if keep is not None:
            self.ctx.pool.put(self.decision_key, keep, idle, ex.ended)
        self.deadline = 0.0  # the route timeout no longer runs (_cancel_timer, inlined)
        if self.timer is not None:
            self._cancel_timer()
        self.busy = False
        if self.paused:
            self._resume(_P_WAIT | _P_UPSTREAM)
        if not self.keep_alive or not self.req_done:
            self.flush()
            self.transport.close()
            return
        if self.backlog is not None:
            self._replay()
        if self.eof and not self.busy and self.backlog is None:
            self.flush()
            self.transport.close()

    def _replay(self) -> None:
        backlog = self.backlog
        if backlog is None:
            return
        handlers = {"url": self._url_replay, "header": self._header_replay, "head": self._head,
                    "body": self._body, "done": self._done}
        try:
            while backlog:
                ev = backlog[0]
                if ev[0] == "begin":
                    if self.busy:
                        return
                    self._begin()
                else:
                    handlers[ev[0]](*ev[1:])
                backlog.pop(0)
                if self.pending_dispatch:
                    self.pending_dispatch = False
                    self._dispatch()
        except BadRequest as e:
            self._bad_request(e)
            return
        self.backlog = None
        self._resume(_P_BACKLOG)

    def _url_replay(self, url: bytes) -> None:
        self.url += url

    def _header_replay(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def _start_tunnel(self, up: H1Upstream) -> None:
        self.resp_started = True
        self.tunnel = True
        up.tunnel = True
        self._cancel_timer()
        self._drop_plan()
        self.ex.done(101)
        if self.tunnel_bytes:
            up.transport.write(self.tunnel_bytes)
            self.tunnel_bytes = b""
        self.paused = 0
        self.transport.resume_reading()

    # -- limits --------------------------------------------------------------------------
    def _head_incomplete(self, n: int) -> None:
        """A read ended inside a request head: bound it, and time it (slowloris)."""
        self.head_pending += n
        if self.head_bytes + self.head_pending > self.max_head:
            self._bad_request(HeaderOverflow(
                f"request head larger than {self.lim.max_request_headers_kb} KiB"))
            return
        timeout = self.lim.request_headers_timeout
        if timeout and self.head_timer is None and not self.busy and self.backlog is None:
            self.head_timer = asyncio.get_running_loop().call_later(timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.in_head and not self.closed:  # Envoy: 408, connection closed
            self._bad_request(BadRequest("request headers timeout", 408))

    def _idle_check(self) -> None:
        """Close the connection once it had no request in flight for the idle timeout."""
        self.idle_timer = None
        if self.closed:
            return
        idle = self.lim.idle_timeout
        left = idle - (time.monotonic() - self.last_active)
        if self.busy or self.in_head or self.tunnel or self.backlog is not None:
            left = idle
        elif left <= 0:
            self.transport.close()
            return
        self.idle_timer = asyncio.get_running_loop().call_later(left, self._idle_check)

    # -- local replies -------------------------------------------------------------------
    def _bad_request(self, err: Exception) -> None:
        self._drop_plan()
        self.ctx.stats.protocol_error()
        cause = err if isinstance(err, BadRequest) else (err.__context__ or err.__cause__)
        status = cause.status if isinstance(cause, BadRequest) else 400
        self.keep_alive = False
        self.busy = False
        self.backlog = None
        if self.up is not None:
            up, self.up = self.up, None
            up.down = None
            up.transport.abort()
        if status == 400:
            head, body = b"HTTP/1.1 400 Bad Request", b"bad request\n"
        else:
            head = b"HTTP/1.1 %d %s" % (status, replies.reason(status))
            body = replies.body(str(cause))
        self.wbuf.append(b"%s\r\ncontent-type: text/plain\r\n"
                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (head, len(body), body))
        self.flush()
        self.transport.close()

    def _local_reply(self, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = replies.body(message) if message else b""
        self.resp_started = True
        self.resp_status = 0
        close = not self.keep_alive or not self.req_done or self.ctx.draining()
        extra = b"".join(b"%s: %s\r\n" % kv for kv in headers) if headers else b""
        self.wbuf.append(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
                status, replies.reason(status), len(body), extra,
                b"connection: close\r\n" if close else b"", body))
        if close:
            self.keep_alive = False
        self.resp_chunked = False
        self.ex.resp_bytes = len(body)
        self._exchange_done(status)
        self.flush()
