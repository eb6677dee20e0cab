"""Protocol detection: the HTTP/2 preface whatever follows it, HTTP/1.1 with any method token,
and properties over arbitrary and mutated bytes (no exception, a decision never changes as
bytes arrive, nothing HTTP-shaped is taken for opaque)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar import detect
from sidecar.detect import H1, H2, H2_PREFACE, OPAQUE, TLS, classify

SETTINGS_FRAME = b"\x00\x00\x0c\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\x00\x04\x00\x00\xff\xff"


@pytest.mark.parametrize("data,kind", [
    (H2_PREFACE + SETTINGS_FRAME, H2),  # what every h2c prior-knowledge client sends at once
    (H2_PREFACE + b"anything at all", H2),
    (H2_PREFACE[:23], None),
    (b"PROPFIND /dav/ HTTP/1.1\r\nHost: x\r\n\r\n", H1),
    (b"MKCOL /a HTTP/1.0\r\n", H1),
    (b"PROPFIND", None), (b"PROPFIND /dav/", None), (b"PROPFIND /dav/ HTT", None),
    (b"PRI * HTTP/1.1\r\n", H1),
    (b"PROPFIND /dav/ SMTP\r\n", OPAQUE),
    (b"HELO example.com\r\n", OPAQUE),  # no request target + version: not HTTP
    (b"EHLO  x", OPAQUE), (b"A" * 40, OPAQUE), (b"\x00\x01", OPAQUE),
    (b"SSH-2.0-OpenSSH_9.2\r\n", OPAQUE),
    (b"PROPFIND /" + b"a" * detect.LONG_LINE, H1),  # a huge target: the parser answers it
    (b"*1\r\n$4\r\nPING\r\n", OPAQUE),
    (b"\x16\x03\x01\x02\x00", TLS),
])
def test_classify(data: bytes, kind: str | None) -> None:
    assert classify(data) == kind


KINDS = {None, H1, H2, TLS, OPAQUE}
tokens = st.text(alphabet=sorted(chr(c) for c in detect._TCHAR), min_size=1, max_size=detect.MAX_METHOD)
targets = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
@example(H2_PREFACE + b"\x00", False)
def test_arbitrary_bytes_never_raise_and_decisions_are_stable(data: bytes, http_only: bool) -> None:
    seen = None
    for end in range(len(data) + 1):
        kind = classify(data[:end], http_only)
        assert kind in KINDS
        if seen is not None:
            assert kind == seen, (data[:end], seen, kind)  # more bytes never change a decision
        seen = kind if kind is not None else seen
    if http_only and data:
        assert classify(data, True) != OPAQUE  # on an HTTP port nothing is piped raw


@settings(max_examples=300, deadline=None)
@given(tokens, targets, st.sampled_from([b"0", b"1"]), st.binary(max_size=64))
def test_any_http1_request_line_is_http(method: str, target: str, minor: bytes, rest: bytes) -> None:
    line = f"{method} {target} HTTP/1.".encode() + minor + b"\r\n" + rest
    assert classify(line) == H1
    assert classify(line, http_only=True) == H1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=23), st.integers(0, 255))
def test_preface_with_anything_after_is_h2_and_mutated_preface_is_not(
        tail: bytes, pos: int, byte: int) -> None:
    assert classify(H2_PREFACE + tail) == H2
    mutated = bytearray(H2_PREFACE)
    mutated[pos] = byte
    got = classify(bytes(mutated) + tail)
    assert got == H2 if mutated == bytearray(H2_PREFACE) else got != H2


def _client_hello(server_hostname: str | None) -> bytes:
    import ssl

    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_client_hello_sni_and_alpn_for_connection_sni() -> None:
    from sidecar.tls import client_hello_alpns, client_hello_sni

    hello = _client_hello("api.example")
    assert classify(hello) == TLS
    assert client_hello_sni(hello) == "api.example"
    assert client_hello_alpns(hello) == [b"h2"]
    assert client_hello_sni(_client_hello(None)) == ""
    assert client_hello_sni(b"GET / HTTP/1.1\r\n") == ""
    assert client_hello_sni(hello[:20]) == ""
