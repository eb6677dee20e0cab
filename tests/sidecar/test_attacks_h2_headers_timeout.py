"""HTTP/2 request-headers timeout (slowloris on HTTP/2), against the real inbound relay in its
own process, on both codecs: a header block that never ends (HEADERS without END_HEADERS and
no CONTINUATION; a HEADERS frame sent in part) closes the connection after
REMORA_REQUEST_HEADERS_TIMEOUT; a slow *body* and an idle connection are not touched by it;
nothing reaches the app; normal requests keep working. The frame scanner itself has fast
tests at the end. Limits: sidecar/http/limits.py (HeaderBlockWatch); docs/security.md."""

from __future__ import annotations

import time

import pytest
from attack_client import (
    ContinuationFrame,
    RawH2,
    frame_bytes,
    goaway,
    h2_ok,
    response_status,
    start_proxy,
)
from hyperframe.frame import DataFrame, HeadersFrame, WindowUpdateFrame

from sidecar.http import limits, ngcodec

CODECS = ["h2", pytest.param("nghttp2", marks=pytest.mark.skipif(
    not ngcodec.available(), reason="the native nghttp2 codec is not built"))]
TIMEOUT = 1.0


@pytest.fixture(scope="module", params=CODECS)
def proxy(request):
    p = start_proxy({"REMORA_H2_CODEC": request.param, "REMORA_REQUEST_HEADERS_TIMEOUT": str(TIMEOUT),
                     "REMORA_IDLE_TIMEOUT": "30"})
    try:
        yield p
    finally:
        err = p.stop()
        assert "Traceback" not in err, err


def _closed_after(c: RawH2, limit: float = 6.0) -> tuple[float, list]:
    """Seconds until the proxy closes the connection, and the frames it sent."""
    started = time.monotonic()
    got: list = []
    while time.monotonic() - started < limit:
        frames, closed = c.frames(0.2)
        got += frames
        if closed:
            return time.monotonic() - started, got
    raise AssertionError(f"connection still open after {limit}s; got {got[-3:]}")


def test_headers_without_end_headers_close_the_connection(proxy):
    before = proxy.seen()["requests"]
    c = RawH2(proxy.h2)
    c.send(c.headers(1))  # a complete request first: served
    frames, _ = c.until(lambda fs: response_status(fs, 1) is not None)
    assert response_status(frames, 1) == 200
    block = c.enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/slow"),
                          (b":authority", b"app")])
    c.send(HeadersFrame(3, block, flags=["END_STREAM"]))  # no END_HEADERS, and no CONTINUATION
    took, frames = _closed_after(c)
    c.close()
    assert TIMEOUT * 0.8 < took < TIMEOUT + 3, took
    ga = goaway(frames)  # a GOAWAY (nghttp2 names stream 3 as begun; h2 does not), then close
    assert ga is None or ga.error_code == 0, ga
    assert proxy.seen()["requests"] - before == 1
    h2_ok(proxy.h2)


def test_continuations_that_never_end_close_the_connection(proxy):
    """CONTINUATION frames trickled without END_HEADERS: each one is progress on the wire but
    the block never completes, so the timer armed at its first byte still fires."""
    c = RawH2(proxy.h2)
    block = c.enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"app")])
    c.send(HeadersFrame(1, block[:4], flags=["END_STREAM"]))
    started = time.monotonic()
    closed = False
    for _ in range(int(TIMEOUT * 4 / 0.3)):
        try:
            c.send(ContinuationFrame(1, b"\x40\x01x\x01y"))  # literal x: y, and more to come
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        _, closed = c.frames(0.3)
        if closed:
            break
    took = time.monotonic() - started
    c.close()
    assert closed and took < TIMEOUT + 3, took
    h2_ok(proxy.h2)


def test_a_headers_frame_sent_in_part_closes_the_connection(proxy):
    c = RawH2(proxy.h2)
    raw = frame_bytes(c.headers(1))
    c.send(raw[: len(raw) - 3])  # the frame header and most of the block, never the rest
    took, _ = _closed_after(c)
    c.close()
    assert TIMEOUT * 0.8 < took < TIMEOUT + 3, took
    h2_ok(proxy.h2)


def test_a_slow_body_is_not_a_slow_head(proxy):
    """Headers complete, the body trickles for longer than the timeout: served (that is the
    idle/route timeouts' business, not this one's)."""
    before = proxy.seen()["requests"]
    c = RawH2(proxy.h2)
    c.send(c.headers(1, end=False, method=b"POST"))
    for _ in range(int(TIMEOUT * 2.5 / 0.25)):
        c.send(DataFrame(1, b"x"), WindowUpdateFrame(0, window_increment=1))
        _, closed = c.frames(0.25)
        assert not closed
    c.send(DataFrame(1, b"end", flags=["END_STREAM"]))
    frames, closed = c.until(lambda fs: response_status(fs, 1) is not None)
    assert response_status(frames, 1) == 200 and not closed
    c.close()
    assert proxy.seen()["requests"] - before == 1


def test_an_idle_connection_is_not_a_slow_head(proxy):
    c = RawH2(proxy.h2)
    frames, closed = c.frames(TIMEOUT * 2.5)
    assert not closed and goaway(frames) is None
    c.send(c.headers(1))
    frames, _ = c.until(lambda fs: response_status(fs, 1) is not None)
    assert response_status(frames, 1) == 200
    c.close()


# -- the scanner alone (no sockets) -------------------------------------------------------------

def _frame(ftype: int, flags: int, payload: bytes, sid: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _watch() -> limits.HeaderBlockWatch:
    return limits.HeaderBlockWatch(limits.Limits(), lambda: None)


def test_scan_follows_header_blocks_across_reads() -> None:
    w = _watch()
    settings = _frame(4, 0, b"", 0)
    assert not w.scan(PREFACE + settings)
    assert w.scan(_frame(1, 0, b"abc"))  # HEADERS without END_HEADERS
    assert w.scan(_frame(9, 0, b"de"))  # CONTINUATION, still open
    assert not w.scan(_frame(9, 4, b"f"))  # END_HEADERS
    assert not w.scan(_frame(1, 5, b"abc") + _frame(0, 1, b"body", 1))  # whole request


@pytest.mark.parametrize("cut", [1, 5, 9, 12, 20])
def test_scan_any_split_point(cut: int) -> None:
    """The same bytes split anywhere give the same answer at the end."""
    data = PREFACE + _frame(4, 0, b"", 0) + _frame(1, 4, b"x" * 10) + _frame(0, 0, b"y" * 30)
    w = _watch()
    w.scan(data[:cut])
    assert not w.scan(data[cut:])
    w = _watch()
    data2 = data + _frame(1, 0, b"h" * 7, 3)
    w.scan(data2[: len(data2) - cut if cut < len(data2) else 1])
    assert w.scan(data2[len(data2) - cut:])


def test_scan_a_partial_headers_frame_is_open_a_partial_data_frame_is_not() -> None:
    w = _watch()
    w.scan(PREFACE)
    assert w.scan(_frame(1, 4, b"z" * 100)[:50])
    assert not w.scan(_frame(1, 4, b"z" * 100)[50:])
    assert not w.scan(_frame(0, 0, b"d" * 100)[:40])
