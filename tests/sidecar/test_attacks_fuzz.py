"""Property tests: arbitrary and mutated bytes fed to both HTTP/1.1 paths (the sans-IO
``H1ServerCodec`` and the relay's own parser in ``H1Downstream``) and to the ``h2`` codec
(the native one: tests/sidecar/test_ngcodec.py; detection: test_detect.py). No exception
escapes, and nothing ambiguous is forwarded: every request that gets through has one Host,
at most one framing, the header limits, no CONNECT, and only the proxy's own XFCC."""

from __future__ import annotations

import asyncio
import logging

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.events import ProtocolError, RequestHead
from sidecar.http.h1 import H1ServerCodec
from sidecar.http.h2codec import H2Codec
from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.stats import INBOUND, Stats

PEER = "spiffe://cluster.local/ns/a/sa/client"
LOCAL = "spiffe://cluster.local/ns/b/sa/server"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"PROPFIND", b"G\x00T", b""])
targets = st.sampled_from([b"/", b"/a?b", b"http://real:80/p", b"https://x", b"*", b"x",
                           b"ftp://x/", b"http://u@h/", b"/" + b"a" * 70_000])
names = st.sampled_from([b"Host", b"host", b"Content-Length", b"Transfer-Encoding",
                         b"Connection", b"Upgrade", b"X-Forwarded-Client-Cert", b"x-request-id",
                         b"X-A", b"Te", b"Host ", b"X\x7f"])
values = st.sampled_from([b"a", b"", b"0", b"5", b"-1", b"chunked", b"gzip, chunked",
                          b"keep-alive, X-A", b"websocket", b"By=spiffe://evil", b" 3 ", b"\x00"])
headers = st.lists(st.tuples(names, values), max_size=8).map(
    lambda hs: b"".join(b"%s: %s\r\n" % h for h in hs))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\n"]))
    many = b"".join(b"x-%d: v\r\n" % i for i in range(draw(st.sampled_from([0, 0, 99, 101]))))
    head = (draw(methods) + b" " + draw(targets) + b" " + version + b"\r\n" + draw(headers)
            + many + b"\r\n")
    body = draw(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n"]))
    wire = (head + body) * draw(st.integers(1, 2))
    noise = draw(st.binary(max_size=16))
    at = draw(st.integers(0, len(wire)))
    if draw(st.booleans()):
        wire = wire[:at] + noise + wire[at:]
    return wire


def _chunks(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def _check_head(method: bytes, headers: list[tuple[bytes, bytes]], extra: int) -> None:
    lnames = [n.lower() for n, _ in headers]
    assert method != b"CONNECT"
    assert lnames.count(b"host") <= 1
    assert not (b"content-length" in lnames and b"transfer-encoding" in lnames)
    assert lnames.count(b"content-length") <= 1
    assert len(headers) <= 100 + extra


@FUZZ
@given(requests(), st.lists(st.integers(0, 80_000), max_size=4))
def test_h1_codec_never_raises_and_passes_only_unambiguous_heads(wire, cuts):
    codec = H1ServerCodec()
    for chunk in _chunks(wire, cuts):
        for ev in codec.feed(chunk):
            if isinstance(ev, RequestHead):
                _check_head(ev.method, ev.headers, 0)
                assert ev.authority or ev.http10, ev
            elif isinstance(ev, ProtocolError):
                assert ev.status in (400, 403, 408, 431)
        codec.data_to_send()


@FUZZ
@given(st.binary(max_size=400))
def test_h1_codec_arbitrary_bytes(blob):
    codec = H1ServerCodec()
    for ev in codec.feed(blob):
        if isinstance(ev, RequestHead):
            _check_head(ev.method, ev.headers, 0)
    codec.data_to_send()


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def, override]
        for p in parts:
            self.out += p

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high=None, low=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def can_write_eof(self) -> bool:
        return False


class _Connector:
    """Hands the relay an upstream whose bytes the test reads: what would reach the app."""

    def __init__(self) -> None:
        self.sent: list[_Transport] = []

    async def connect(self, endpoint, alpn, factory, timeout=5.0):  # type: ignore[no-untyped-def]
        t = _Transport()
        up = factory()
        up.connection_made(t)
        self.sent.append(t)
        return t, up, None


class _Forwarded:
    """httptools (strict) over what the relay forwarded: every head, or a parse error."""

    def __init__(self) -> None:
        self.heads: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads.append((self.parser.get_method(), self.headers))


def _relay(chunks: list[bytes]) -> tuple[bytes, bytes]:
    """Feed ``chunks`` to an inbound H1Downstream; (what reached the upstream, the reply)."""
    async def run() -> tuple[bytes, bytes]:
        stats, conn = Stats(), _Connector()
        ctx = H1Context(INBOUND, conn, H1Pool(stats), stats, lambda: False,  # type: ignore[arg-type]
                        inbound_target=("127.0.0.1", 8080), peer_identity=PEER,
                        local_identity=LOCAL, service="inbound|8080")
        down, t = H1Downstream(ctx), _Transport()
        down.connection_made(t)
        for chunk in chunks:
            if t.closing:
                break
            down.data_received(chunk)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        if not down.closed:
            down.connection_lost(None)
        return b"".join(bytes(u.out) for u in conn.sent), bytes(t.out)
    return asyncio.run(run())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.integers(0, 80_000), max_size=4))
def test_h1_relay_never_raises_and_forwards_only_unambiguous_requests(wire, cuts):
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    log = logging.getLogger("remora.http1")
    log.addHandler(handler)
    try:
        forwarded, reply = _relay(_chunks(wire, cuts))
    finally:
        log.removeHandler(handler)
    assert not errors, [e.getMessage() for e in errors]  # a callback bug is logged, not raised
    if reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:100]
    f = _Forwarded()
    f.parser.feed_data(forwarded)  # what reaches the app is valid HTTP/1.1 (raises otherwise)
    for method, hs in f.heads:
        _check_head(method, hs, 2)  # + x-request-id and the proxy's XFCC
        lnames = [n.lower() for n, _ in hs]
        assert lnames.count(b"host") == 1  # absolute-form gave it, or the client did (1.1)
        xfcc = [v for n, v in hs if n.lower() == b"x-forwarded-client-cert"]
        assert len(xfcc) == 1 and b"evil" not in xfcc[0] and PEER.encode() in xfcc[0]


def _h2_request_wire() -> bytes:
    client = H2Codec(client_side=True)
    wire = client.data_to_send()
    client.send_request_head(RequestHead(1, b"POST", b"http", b"app", b"/x",
                                         [(b"content-type", b"application/grpc")], False))
    client.send_data(1, b"\0\0\0\0\x02hi", end_stream=True)
    return wire + client.data_to_send()


H2_WIRE = _h2_request_wire()


@FUZZ
@given(st.binary(max_size=300), st.integers(0, len(H2_WIRE)), st.booleans())
def test_h2_codec_mutated_and_arbitrary_bytes_never_raise(noise, where, replace):
    server = H2Codec(client_side=False)
    wire = H2_WIRE[:where] + noise + (H2_WIRE[where + len(noise):] if replace else H2_WIRE[where:])
    for chunk in (wire, noise):
        for ev in server.feed(chunk):
            if isinstance(ev, RequestHead):  # whatever got through is a whole request
                assert ev.method and (ev.path or ev.method == b"CONNECT")
        server.data_to_send()


def test_h1_relay_check_is_not_vacuous():
    """The property's own checks see a forwarded request: forged XFCC and Host replaced."""
    forwarded, reply = _relay([b"GET http://real:80/p HTTP/1.1\r\nhost: forged\r\n"
                               b"X-Forwarded-Client-Cert: By=spiffe://evil\r\n\r\n"])
    assert reply == b""  # no local answer: it went on
    f = _Forwarded()
    f.parser.feed_data(forwarded)
    [(method, hs)] = f.heads
    assert forwarded.startswith(b"GET /p HTTP/1.1\r\n")
    assert (b"host", b"real:80") in hs
    assert [v for n, v in hs if n == b"x-forwarded-client-cert"] == [
        b"By=" + LOCAL.encode() + b";URI=" + PEER.encode()]
