"""HTTP/1.1 attacks against the real inbound relay (its own process, loopback sockets): each
gets Envoy's answer, the proxy's memory stays bounded, and normal requests keep working.
Limits: sidecar/http/limits.py; docs/security.md "Limits"."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from attack_client import (
    Proxy,
    connect,
    h1_exchange,
    h1_ok,
    read_until_close,
    start_proxy,
    status_of,
)

# Short timeouts so the slow-client cases take a second, not Envoy's default minutes.
ENV = {"REMORA_REQUEST_HEADERS_TIMEOUT": "1", "REMORA_IDLE_TIMEOUT": "1",
       "REMORA_MAX_REQUESTS_PER_CONNECTION": "3"}


@pytest.fixture(scope="module")
def proxy():
    p = start_proxy(ENV)
    try:
        yield p
    finally:
        err = p.stop()
        assert "Traceback" not in err, err


def _refused(proxy: Proxy, request: bytes, status: int) -> bytes:
    before = proxy.seen()["requests"]
    with connect(proxy.h1) as s:
        s.sendall(request)
        out = read_until_close(s)  # answered, then closed
    assert status_of(out) == status, out[:300]
    assert b"connection: close" in out.lower()
    assert proxy.seen()["requests"] == before, "the refused request reached the app"
    h1_ok(proxy.h1)
    return out


def test_101_headers_get_431(proxy):
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(101))
    out = _refused(proxy, b"GET / HTTP/1.1\r\nhost: app\r\n" + headers + b"\r\n", 431)
    assert b"more than 100 headers" in out
    ok = b"".join(b"x-h%d: v\r\n" % i for i in range(99))  # 100 with Host: accepted
    assert status_of(h1_exchange(proxy.h1, b"GET / HTTP/1.1\r\nhost: app\r\n" + ok + b"\r\n")) == 200
    assert proxy.seen()["max_headers"] >= 100


def test_10000_headers_get_431_without_growing_the_proxy(proxy):
    rss = proxy.rss_kb()
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    _refused(proxy, b"GET / HTTP/1.1\r\nhost: app\r\n" + headers + b"\r\n", 431)
    assert proxy.rss_kb() - rss < 8 * 1024


def test_header_bytes_over_60_kib_get_431(proxy):
    big = b"x-big: " + b"a" * (61 * 1024) + b"\r\n"
    _refused(proxy, b"GET / HTTP/1.1\r\nhost: app\r\n" + big + b"\r\n", 431)
    fits = b"x-big: " + b"a" * (50 * 1024) + b"\r\n"
    assert status_of(h1_exchange(proxy.h1, b"GET / HTTP/1.1\r\nhost: app\r\n" + fits + b"\r\n")) == 200


def test_request_line_over_60_kib_gets_431(proxy):
    _refused(proxy, b"GET /" + b"a" * (61 * 1024) + b" HTTP/1.1\r\nhost: app\r\n\r\n", 431)


def test_a_header_that_never_ends_is_cut_off_before_memory_grows(proxy):
    """The issue's 128 MB header grew the proxy to 349 MB: now the connection is answered
    431 and closed after about 60 KiB, and RSS does not move."""
    rss = proxy.rss_kb()
    sent = 0
    with connect(proxy.h1) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: app\r\nx-endless: ")
        chunk = b"a" * 65536
        try:
            while sent < 128 * 1024 * 1024:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(2)
        try:
            out = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            out = b""
    assert sent < 16 * 1024 * 1024, f"the proxy kept reading: {sent} bytes"
    assert out == b"" or status_of(out) == 431, out[:200]
    assert proxy.rss_kb() - rss < 8 * 1024, (rss, proxy.rss_kb())
    h1_ok(proxy.h1)


def test_slowloris_connections_get_408_and_are_closed(proxy):
    """50 clients trickle a head that never completes: each is answered 408 and closed at
    the request-headers timeout (1 s here; 10 s by default) while others are served."""
    conns = [connect(proxy.h1) for _ in range(50)]
    for s in conns:
        s.sendall(b"GET / HTTP/1.1\r\nhost: app\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for s in conns:
                with contextlib.suppress(OSError):
                    s.send(b"x")
            time.sleep(0.1)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        h1_ok(proxy.h1)  # served during the attack
        started = time.monotonic()
        outs = [read_until_close(s, limit=4) for s in conns]
    finally:
        stop.set()
        t.join()
        for s in conns:
            s.close()
    assert time.monotonic() - started < 3
    assert all(status_of(o) == 408 for o in outs), outs[0][:200]
    h1_ok(proxy.h1)


def test_an_idle_connection_is_closed_after_the_idle_timeout(proxy):
    with connect(proxy.h1) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        started = time.monotonic()
        out = read_until_close(s, limit=5)  # the response, then the close at 1 s idle
    assert status_of(out) == 200
    assert 0.8 < time.monotonic() - started < 3


def test_max_requests_per_connection_closes_after_the_last(proxy):
    with connect(proxy.h1) as s:
        s.sendall(b"GET /1 HTTP/1.1\r\nhost: app\r\n\r\n" * 4)
        out = read_until_close(s)
    assert out.count(b"HTTP/1.1 200") == 3, out  # the 4th is never read
    assert out.count(b"connection: close") == 1


def test_missing_host_is_400_and_http10_without_host_is_served(proxy):
    _refused(proxy, b"GET / HTTP/1.1\r\nx: y\r\n\r\n", 400)
    _refused(proxy, b"GET / HTTP/1.1\r\nhost:\r\n\r\n", 400)  # empty
    out = h1_exchange(proxy.h1, b"GET / HTTP/1.0\r\n\r\n")
    assert status_of(out) == 200


def test_connect_is_403(proxy):
    out = _refused(proxy, b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n", 403)
    assert out.endswith(b"CONNECT is not supported")


def test_absolute_form_authority_replaces_a_different_host(proxy):
    out = h1_exchange(proxy.h1, b"GET http://real.example:8080/p?q=1 HTTP/1.1\r\nhost: forged\r\n\r\n")
    assert status_of(out) == 200
    seen = proxy.seen()
    assert seen["paths"][-1] == "/p?q=1" and seen["hosts"][-1] == "real.example:8080"
    _refused(proxy, b"GET ftp://x/ HTTP/1.1\r\nhost: x\r\n\r\n", 400)


def test_pipelined_heads_count_each_request_on_its_own(proxy):
    """The header count restarts per request even while earlier ones are queued."""
    one = b"GET / HTTP/1.1\r\nhost: app\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(90)) + b"\r\n"
    with connect(proxy.h1) as s:
        s.sendall(one * 3)
        out = read_until_close(s)
    assert out.count(b"HTTP/1.1 200") == 3, out[:300]


def test_the_proxy_survives_and_serves_after_the_attacks(proxy):
    proxy.alive()
    for _ in range(3):
        h1_ok(proxy.h1)
    with socket.create_connection(("127.0.0.1", proxy.h1)) as s:  # garbage is 400, not a crash
        s.sendall(b"\x00\x01\x02 garbage\r\n\r\n")
        assert status_of(read_until_close(s)) == 400
