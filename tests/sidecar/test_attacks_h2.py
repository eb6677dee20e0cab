"""HTTP/2 attacks with frames the test makes (hyperframe, hpack) against the real inbound
relay in its own process, on both codecs (REMORA_H2_CODEC=h2 and nghttp2): each gets
Envoy's answer, the proxy's memory stays bounded, normal requests keep working.
Limits: sidecar/http/limits.py; docs/security.md "Limits"."""

from __future__ import annotations

import time

import pytest
from attack_client import (
    ContinuationFrame,
    PingFrame,
    Proxy,
    RawH2,
    RstStreamFrame,
    SettingsFrame,
    goaway,
    h2_ok,
    response_status,
    start_proxy,
)
from hyperframe.frame import HeadersFrame
from hyperframe.frame import RstStreamFrame as Rst
from hyperframe.frame import SettingsFrame as Settings

from sidecar.http import ngcodec

ENHANCE_YOUR_CALM = 11
CODECS = ["h2", pytest.param("nghttp2", marks=pytest.mark.skipif(
    not ngcodec.available(), reason="the native nghttp2 codec is not built"))]


@pytest.fixture(scope="module", params=CODECS)
def proxy(request):
    p = start_proxy({"REMORA_H2_CODEC": request.param, "REMORA_IDLE_TIMEOUT": "1"})
    try:
        yield p
    finally:
        err = p.stop()
        assert "Traceback" not in err, err


def _ended(proxy: Proxy, c: RawH2, limit: float = 5.0) -> list:
    """Frames until the proxy closes the connection (AssertionError if it does not)."""
    got: list = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        frames, closed = c.frames(0.5)
        got += frames
        if closed:
            return got
    raise AssertionError(f"connection still open; got {got[-5:]}")


def test_rapid_reset_closes_the_connection(proxy):
    """HEADERS + RST_STREAM in a loop (CVE-2023-44487): Envoy closes the connection once half
    of 500 streams were reset within a second; nghttp2's own bucket may close it first."""
    rss, before = proxy.rss_kb(), proxy.seen()["requests"]
    c = RawH2(proxy.h2)
    sent = 0
    try:
        for batch in range(40):  # up to 20,000 streams, as in the issue
            frames = []
            for i in range(250):
                sid = 1 + 2 * (batch * 250 + i)
                frames += [c.headers(sid, end=False), RstStreamFrame(sid, error_code=8)]
            c.send(*frames)
            sent += 250
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = _ended(proxy, c)
    c.close()
    assert sent < 20_000 or goaway(frames) is not None, frames[-5:]
    assert proxy.seen()["requests"] - before < 1000  # not every stream reached the app
    assert proxy.rss_kb() - rss < 16 * 1024
    h2_ok(proxy.h2)


def test_ordinary_streams_do_not_trip_the_reset_budget(proxy):
    """600 streams that end normally (past Envoy's 500-stream check) keep the connection."""
    c = RawH2(proxy.h2)
    for batch in range(6):
        c.send(*[c.headers(1 + 2 * (batch * 100 + i)) for i in range(100)])
        frames, closed = c.until(
            lambda fs: sum(1 for f in fs if f.type == 0 and "END_STREAM" in f.flags) >= 100, 5)
        assert not closed and goaway(frames) is None, frames[-3:]
    c.close()


def test_ping_flood_is_closed_with_enhance_your_calm(proxy):
    rss = proxy.rss_kb()
    c = RawH2(proxy.h2)
    ping = bytes(PingFrame(0, opaque_data=b"12345678").serialize())
    try:
        for _ in range(40):  # 246,000 frames in the issue; closed long before
            c.send(ping * 6000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = _ended(proxy, c)
    c.close()
    pings = sum(1 for f in frames if isinstance(f, PingFrame))
    ga = goaway(frames)  # h2 codec: GOAWAY(ENHANCE_YOUR_CALM); nghttp2 may just close
    assert ga is None or ga.error_code == ENHANCE_YOUR_CALM, ga
    assert pings < 200_000  # closed long before all were answered
    assert proxy.rss_kb() - rss < 16 * 1024
    h2_ok(proxy.h2)


def test_settings_flood_is_closed(proxy):
    c = RawH2(proxy.h2)
    settings = bytes(SettingsFrame(0, settings={Settings.INITIAL_WINDOW_SIZE: 65535}).serialize())
    try:
        for _ in range(20):
            c.send(settings * 5000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = _ended(proxy, c)  # closed (with GOAWAY, or at once by nghttp2)
    c.close()
    assert sum(1 for f in frames if isinstance(f, SettingsFrame)) < 100_000
    h2_ok(proxy.h2)


def test_101_headers_get_431_and_10000_never_reach_the_app(proxy):
    before = proxy.seen()["requests"]
    c = RawH2(proxy.h2)
    c.send(c.headers(1, extra=[(b"x-h%d" % i, b"v") for i in range(101)]))
    frames, _ = c.until(lambda fs: response_status(fs, 1) is not None)
    assert response_status(frames, 1) == 431
    c.send(c.headers(3, extra=[(b"x-h%d" % i, b"v") for i in range(99)]))  # fits
    frames, _ = c.until(lambda fs: response_status(fs, 3) is not None)
    assert response_status(frames, 3) == 200
    c.close()
    c = RawH2(proxy.h2)  # 10,000: 431, or the codec's own header-list limit ends the connection
    block = c.enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"app"), *[(b"x-h%d" % i, b"v") for i in range(10_000)]])
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    c.send(HeadersFrame(1, chunks[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(chunks) == 1 else [])),
           *[ContinuationFrame(1, ch, flags=["END_HEADERS"] if i == len(chunks) - 2 else [])
             for i, ch in enumerate(chunks[1:])])
    frames, closed = c.until(lambda fs: response_status(fs, 1) is not None)
    assert closed or response_status(frames, 1) == 431
    c.close()
    assert proxy.seen()["requests"] - before == 1  # only the request that fitted
    h2_ok(proxy.h2)


def test_header_bytes_over_60_kib_get_431(proxy):
    c = RawH2(proxy.h2)
    big = b"a" * (61 * 1024)
    block = c.enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"app"), (b"x-big", big)])
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    c.send(HeadersFrame(1, chunks[0], flags=["END_STREAM"]),
           *[ContinuationFrame(1, ch, flags=["END_HEADERS"] if i == len(chunks) - 2 else [])
             for i, ch in enumerate(chunks[1:])])
    frames, closed = c.until(lambda fs: response_status(fs, 1) is not None)
    assert closed or response_status(frames, 1) == 431  # nghttp2 may refuse the block itself
    c.close()
    h2_ok(proxy.h2)


def test_continuation_flood_is_cut_off(proxy):
    """A header block that never ends (CONTINUATION without END_HEADERS): the connection is
    closed before the proxy grows."""
    rss = proxy.rss_kb()
    c = RawH2(proxy.h2)
    c.send(HeadersFrame(1, c.enc.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":path", b"/"), (b":authority", b"app")])))
    filler = bytes(ContinuationFrame(1, b"\x00" * 16000).serialize())  # literal, empty names
    sent = 0
    try:
        while sent < 64 * 1024 * 1024:
            c.send(filler * 16)
            sent += len(filler) * 16
    except (BrokenPipeError, ConnectionResetError):
        pass
    _ended(proxy, c)
    c.close()
    assert sent < 32 * 1024 * 1024, sent
    assert proxy.rss_kb() - rss < 16 * 1024
    h2_ok(proxy.h2)


def test_connect_is_403_and_no_authority_is_refused(proxy):
    before = proxy.seen()["requests"]
    c = RawH2(proxy.h2)
    c.send(c.headers(1, method=b"CONNECT", authority=b"evil.example:443"))
    frames, _ = c.until(lambda fs: response_status(fs, 1) is not None)
    assert response_status(frames, 1) == 403
    c.send(c.headers(3, authority=None))  # neither :authority nor host: malformed
    frames, closed = c.until(lambda fs: goaway(fs) is not None or response_status(fs, 3) is not None
                             or any(isinstance(f, Rst) and f.stream_id == 3 for f in fs))
    # Both codecs refuse it themselves (h2: GOAWAY, nghttp2: RST_STREAM PROTOCOL_ERROR);
    # the relay answers 400 to what a codec lets through.
    assert (closed or response_status(frames, 3) == 400
            or any(isinstance(f, Rst) and f.stream_id == 3 for f in frames)), frames
    c.close()
    assert proxy.seen()["requests"] == before
    h2_ok(proxy.h2)


def test_streams_over_the_concurrency_limit_are_refused(proxy):
    """128 concurrent streams are advertised; the 129th open one is refused, not relayed."""
    c = RawH2(proxy.h2)
    frames, _ = c.frames(0.5)
    advertised = [f.settings for f in frames if isinstance(f, SettingsFrame) and f.settings]
    assert advertised and advertised[0][Settings.MAX_CONCURRENT_STREAMS] == 128
    c.send(SettingsFrame(0, flags=["ACK"]))
    c.send(*[c.headers(1 + 2 * i, end=False) for i in range(140)])  # bodies never end
    frames, closed = c.frames(1.5)
    refused = [f for f in frames if isinstance(f, Rst) and f.error_code in (1, 7)]
    assert closed or goaway(frames) is not None or len(refused) >= 12, frames[-5:]
    c.close()
    h2_ok(proxy.h2)


def test_an_idle_connection_gets_goaway(proxy):
    c = RawH2(proxy.h2)
    started = time.monotonic()
    frames = _ended(proxy, c, limit=5)
    assert goaway(frames) is not None and 0.8 < time.monotonic() - started < 3
    c.close()


@pytest.mark.parametrize("codec", CODECS)
def test_max_requests_per_connection_sends_goaway_after_the_last(codec):
    """The 3rd request of a connection gets a graceful GOAWAY; the connection then closes
    (a stream already in the same read as the 3rd is served: the GOAWAY names it)."""
    p = start_proxy({"REMORA_H2_CODEC": codec, "REMORA_MAX_REQUESTS_PER_CONNECTION": "3"})
    try:
        c = RawH2(p.h2)
        c.send(*[c.headers(sid) for sid in (1, 3, 5)])
        frames = _ended(p, c)
        c.close()
        assert [response_status(frames, sid) for sid in (1, 3, 5)] == [200, 200, 200]
        ga = goaway(frames)
        assert ga is not None and ga.last_stream_id == 5 and ga.error_code == 0
        assert p.seen()["requests"] == 3
        h2_ok(p.h2)  # a new connection is served
    finally:
        assert "Traceback" not in p.stop()


def test_a_client_that_never_reads_cannot_grow_the_outbound_queue(proxy):
    """Requests answered locally (CONNECT: 403) sent by a client that never reads: the proxy
    stops reading that client once its write buffer is full, so what queues stays bounded
    (Envoy counts frames, max_outbound_frames; here the bound is in bytes)."""
    import socket

    rss = proxy.rss_kb()
    c = RawH2(proxy.h2)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sock.settimeout(2)
    sent = 0
    try:
        for batch in range(100):  # up to 500,000 requests
            c.send(*[c.headers(1 + 2 * (batch * 5000 + i), method=b"CONNECT",
                               authority=b"x:443") for i in range(5000)])
            sent += 5000
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    grown = proxy.rss_kb() - rss
    c.close()
    assert sent < 500_000, "the proxy kept reading a client that does not read"
    assert grown < 32 * 1024, grown
    h2_ok(proxy.h2)
