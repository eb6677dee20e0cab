"""Sans-IO HTTP/1.1 codecs on httptools (llhttp): bytes → events, events → bytes.

``H1ServerCodec`` is the downstream end (requests in), ``H1ClientCodec`` the upstream end
(responses in). Framing follows docs/proxy.md "HTTP/1.1":

- requests the proxy cannot vouch for are refused with 400 and never produce a
  ``RequestHead``: both Content-Length and Transfer-Encoding, repeated or non-numeric
  Content-Length, a Transfer-Encoding other than ``chunked``, a repeated Host, no Host on
  HTTP/1.1, and anything llhttp rejects (bare LF, space before the colon, invalid
  characters, garbage); a head over the header limits (``limits.py``) gets 431 and CONNECT
  403; an absolute-form target's authority replaces the Host;
- bodies are de-framed into ``Data`` events and re-framed on the way out: a Content-Length
  stays, otherwise the body is chunked (an HTTP/1.0 client instead gets the body until the
  connection closes);
- pipelined requests are all parsed; events of a later request carry its own stream id and
  the owner holds them until the earlier exchange is done (at most one read, it pauses
  reading meanwhile).

Stream ids are 1, 3, 5, ... per connection, as on HTTP/2.
"""

from __future__ import annotations

import httptools

from . import limits
from .events import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseHead,
    Trailers,
    TunnelData,
)
from .replies import body as reply_body
from .replies import reason as reply_reason

MAX_RESPONSE_HEAD_BYTES = 256 * 1024  # an upstream sending more is a protocol error
_NO_BODY_STATUS = frozenset({204, 304})


class BadRequest(Exception):
    """A request refused before it reaches the upstream; ``status`` is the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class HeaderOverflow(BadRequest):
    """Too many headers, or too many bytes in the request line and headers (Envoy: 431)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 431)


def connect_refused() -> BadRequest:
    """CONNECT is answered by the proxy (Envoy without CONNECT support: 403)."""
    return BadRequest("CONNECT is not supported", 403)


def absolute_form(url: bytes) -> tuple[bytes | None, bytes]:
    """(authority, origin-form target) of an absolute-form request target: the authority
    replaces the Host header (RFC 9112 3.2.2; Envoy does the same). Anything else that does
    not start with ``/`` (``*`` for OPTIONS) is kept as it came."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        if url == b"*":
            return None, url
        raise BadRequest("request target is neither origin-form nor absolute-form")
    end = len(rest)
    for c in (b"/", b"?", b"#"):
        i = rest.find(c)
        if i != -1:
            end = min(end, i)
    authority = rest[:end]
    if not authority or b"@" in authority:
        raise BadRequest("absolute-form request target without a valid authority")
    path = rest[end:]
    if path[:1] != b"/":
        path = b"/" + path
    return authority, path


def _refusal(e: Exception) -> tuple[int, str]:
    """(status, message) for a refused request: the BadRequest's, else 400."""
    cause = e if isinstance(e, BadRequest) else (e.__context__ or e.__cause__)
    if isinstance(cause, BadRequest):
        return cause.status, str(cause)
    return 400, str(e) or type(e).__name__


def framing_header(lname: bytes, value: bytes, cl: bytes | None, te: bool) -> tuple[bytes | None, bool]:
    """Check one framing header (smuggling defences); the updated (content-length, chunked).

    The one copy of these rules: the HTTP/1.1 relay's head builder calls it too."""
    if lname == b"content-length":
        value = value.strip()
        if cl is not None or not value.isdigit():
            raise BadRequest("invalid or repeated Content-Length")
        return value, te
    if te or value.strip().lower() != b"chunked":
        raise BadRequest("unsupported Transfer-Encoding")
    return cl, True


def _head_bytes(first: bytes, headers: Headers, extra: list[bytes]) -> bytes:
    out = [first]
    for name, value in headers:
        out.append(b"%s: %s\r\n" % (name, value))
    out += extra
    out.append(b"\r\n")
    return b"".join(out)


class _Writer:
    """Body framing and the output buffer, the same for both ends of a connection."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.chunked = False  # the message being written is chunked

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.chunked:
            if data:
                self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)
        if end_stream:
            self.send_end(stream_id)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self.chunked:  # trailers exist only in chunked framing; otherwise dropped
            self.out.append(_head_bytes(b"0\r\n", headers, []))
            self.chunked = False

    def send_end(self, stream_id: int) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
            self.chunked = False

    def send_window(self, stream_id: int) -> int:
        return 1 << 30  # no flow control: the transport's high-water mark pauses instead

    def ack(self, stream_id: int, flow: int) -> None:
        pass

    def peer_max_streams(self) -> int:
        return 1  # one exchange at a time per connection

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return out[0] if len(out) == 1 else b"".join(out)


class H1ServerCodec(_Writer):
    """The server end of one HTTP/1.1 connection (see the module docstring)."""

    def __init__(self, max_head: int | None = None, max_headers: int | None = None) -> None:
        super().__init__()
        self.parser = httptools.HttpRequestParser(self)
        lim = limits.current()
        self.max_head = lim.max_head_bytes if max_head is None else max_head
        self.max_headers = lim.max_headers_count if max_headers is None else max_headers
        self.in_head = False
        self.head_pending = 0  # bytes read while a head is incomplete (httptools holds them)
        self.events: list[Event] = []
        self.next_id = 1
        self.rx_id = 0  # stream id of the request being parsed
        self.url = b""
        self.headers: Headers = []
        self.head_bytes = 0
        self.cl: bytes | None = None
        self.te = False
        self.hosts = 0
        self.host = b""
        self.upgrade = b""
        self.no_body = False
        self.in_body = False
        self.trailers: Headers = []
        self.tunnel = False
        self.failed = False
        # The response being written (one at a time, in request order).
        self.tx_method = b""
        self.tx_http10 = False
        self.keep_alive = True  # False: the owner closes after the current response

    # -- bytes in ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        if self.tunnel:
            return [TunnelData(self.rx_id, data)]
        if self.failed:
            return []
        events = self.events = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.tunnel = True
            events.append(TunnelData(self.rx_id, data[e.args[0]:]))
        except (httptools.HttpParserError, BadRequest) as e:
            self.refuse(*_refusal(e))
            return events
        if self.in_head:  # an unfinished header grows httptools' buffer: bound it here
            self.head_pending += len(data)
            if self.head_bytes + self.head_pending > self.max_head:
                self.refuse(431, f"request head larger than {self.max_head} bytes")
        return events

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``connection: close``; the connection is done."""
        self.failed = True
        self.keep_alive = False
        b = reply_body(message) if status != 400 else b"bad request\n"
        self.out.append(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                        b"connection: close\r\n\r\n%s" % (status, reply_reason(status), len(b), b))
        self.events.append(ProtocolError(message, status))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_pending = 0
        self.rx_id = self.next_id
        self.next_id += 2
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.cl = None
        self.te = False
        self.hosts = 0
        self.host = b""
        self.upgrade = b""
        self.in_body = False
        self.trailers = []

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.max_head:
            raise HeaderOverflow(f"request line longer than {self.max_head} bytes")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        self.head_pending = 0
        if self.head_bytes > self.max_head:
            raise HeaderOverflow(f"request head larger than {self.max_head} bytes")
        if self.in_body:  # a chunked body's trailer section
            self.trailers.append((name, value))
            return
        if len(self.headers) >= self.max_headers:
            raise HeaderOverflow(f"request has more than {self.max_headers} headers")
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            self.cl, self.te = framing_header(lname, value, self.cl, self.te)
        elif lname == b"host":
            self.hosts += 1
            self.host = value
        elif lname == b"upgrade":
            self.upgrade = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.cl is not None and self.te:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if self.hosts > 1:
            raise BadRequest("repeated Host header")
        p = self.parser
        method = p.get_method()
        if method == b"CONNECT":
            raise connect_refused()
        if self.url[:1] != b"/":
            authority, self.url = absolute_form(self.url)
            if authority is not None:
                self.host = authority
                self.headers = [(n, authority if n.lower() == b"host" else v)
                                for n, v in self.headers]
                if not self.hosts:
                    self.headers.append((b"host", authority))
                self.hosts = 1
        if not self.host and (self.hosts or p.get_http_version() != "1.0"):
            raise BadRequest("missing Host header")  # HTTP/1.1 requires one, not empty
        upgrade = p.should_upgrade()
        self.no_body = not self.te and (self.cl is None or self.cl == b"0")
        self.in_body = True
        self.events.append(RequestHead(
            self.rx_id, method, b"http", self.host, self.url, self.headers,
            self.no_body, p.should_keep_alive(), self.upgrade if upgrade else b"",
            p.get_http_version() == "1.0"))

    def on_body(self, body: bytes) -> None:
        self.events.append(Data(self.rx_id, body))

    def on_message_complete(self) -> None:
        if self.trailers:
            self.events.append(Trailers(self.rx_id, self.trailers))
        elif not self.no_body:
            self.events.append(EndOfMessage(self.rx_id))

    # -- bytes out --------------------------------------------------------------------
    def start_response(self, head: RequestHead) -> None:
        """The next response answers ``head`` (its method and version decide the framing)."""
        self.tx_method = head.method
        self.tx_http10 = head.http10
        self.keep_alive = self.keep_alive and head.keep_alive and not head.upgrade

    def send_response_head(self, stream_id: int, status: int, headers: Headers,
                           end_stream: bool = False, reason: bytes = b"") -> None:
        first = b"HTTP/1.1 %d %s\r\n" % (status, reason or reply_reason(status))
        if status < 200 or (status == 101):
            self.out.append(_head_bytes(first, headers, []))
            return
        extra: list[bytes] = []
        has_cl = any(n.lower() == b"content-length" for n, _ in headers)
        no_body = self.tx_method == b"HEAD" or status in _NO_BODY_STATUS
        self.chunked = False
        if no_body or has_cl:
            pass
        elif end_stream:
            extra.append(b"content-length: 0\r\n")
        elif self.tx_http10:  # knows no chunked encoding: the body ends with the connection
            self.keep_alive = False
        else:
            self.chunked = True
            extra.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            extra.append(b"connection: close\r\n")
        self.out.append(_head_bytes(first, headers, extra))

    def send_reset(self, stream_id: int, code: int) -> None:
        self.keep_alive = False  # HTTP/1.1 can only abort the connection

    def send_goaway(self) -> None:
        self.keep_alive = False  # the current response says connection: close


class H1ClientCodec(_Writer):
    """The client end of one HTTP/1.1 connection to an upstream (one request at a time)."""

    def __init__(self, max_head: int = MAX_RESPONSE_HEAD_BYTES) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)
        self.max_head = max_head
        self.events: list[Event] = []
        self.next_id = 1
        self.tx_id = 0
        self.method = b""
        self.upgrade = False
        self.in_head = False
        self.head_bytes = 0
        self.reason = b""
        self.headers: Headers = []
        self.status = 0
        self.tunnel = False
        self.failed = False
        self.skip_body = False
        self.trailers: Headers = []

    # -- bytes out --------------------------------------------------------------------
    def send_request_head(self, head: RequestHead) -> int:
        sid = self.tx_id = self.next_id
        self.next_id += 2
        self.method = head.method
        self.upgrade = bool(head.upgrade)
        extra: list[bytes] = []
        has_cl = any(n.lower() == b"content-length" for n, _ in head.headers)
        self.chunked = not has_cl and not head.end_stream
        if self.chunked:
            extra.append(b"transfer-encoding: chunked\r\n")
        if head.upgrade:
            extra.append(b"upgrade: %s\r\nconnection: upgrade\r\n" % head.upgrade)
        self.out.append(_head_bytes(b"%s %s HTTP/1.1\r\n" % (head.method, head.path),
                                    head.headers, extra))
        return sid

    def send_reset(self, stream_id: int, code: int) -> None:
        self.failed = True  # the owner aborts the connection

    # -- bytes in ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        if self.tunnel:
            return [TunnelData(self.tx_id, data)]
        if self.failed:
            return []
        events = self.events = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.tunnel:
                events.append(TunnelData(self.tx_id, data[e.args[0]:]))
        except httptools.HttpParserError as e:
            self.failed = True
            events.append(ProtocolError(f"bad response from upstream: {e}", 0))
            return events
        if self.in_head:  # the head goes on past this read: bound what it may hold
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head:
                self.failed = True
                events.append(ProtocolError(f"response head over {self.max_head} bytes", 0))
        return events

    def on_message_begin(self) -> None:
        self.headers = []
        self.trailers = []
        self.reason = b""
        self.in_head = True
        self.head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.headers if self.in_head else self.trailers).append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        p = self.parser
        status = self.status = p.get_status_code()
        if status == 101 and self.upgrade:
            self.tunnel = True
            self.events.append(ResponseHead(self.tx_id, 101, self.headers, False, self.reason, False))
            return
        # A response to HEAD has no body whatever its headers say; httptools would wait for
        # one, so the message ends here and the connection is not reused.
        self.skip_body = status >= 200 and self.method == b"HEAD"
        end = self.skip_body or status in _NO_BODY_STATUS
        self.events.append(ResponseHead(self.tx_id, status, self.headers, end, self.reason,
                                        p.should_keep_alive() and not self.skip_body))
        if self.skip_body:
            self.failed = True

    def on_body(self, body: bytes) -> None:
        self.events.append(Data(self.tx_id, body))

    def on_message_complete(self) -> None:
        if self.status >= 200 and not self.tunnel and self.status not in _NO_BODY_STATUS:
            self.events.append(Trailers(self.tx_id, self.trailers) if self.trailers
                               else EndOfMessage(self.tx_id))
