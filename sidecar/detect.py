"""Protocol detection from the first bytes of a connection (peeked, never consumed).

``classify`` answers "h1", "h2", "tls", "opaque", or None when more bytes are needed to tell.
The listener peeks with MSG_PEEK, so whatever is decided, the chosen handler reads the
connection from its first byte; nothing has to be replayed.

HTTP/1.x is recognised by its request line: a known method and a space at once, any other
method token (PROPFIND, MKCOL, a made-up one) once ``TOKEN SP request-target SP HTTP/1.``
has arrived. The HTTP/2 preface is recognised from its first 24 bytes, whatever follows
(clients send SETTINGS in the same segment). A decision never changes as more bytes arrive.
"""

from __future__ import annotations

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
            b"CONNECT ", b"TRACE ")
PEEK_BYTES = 4096  # enough for a ClientHello with ALPN in all practical cases
# RFC 9110 token characters (a method is a token).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
MAX_METHOD = 32  # longer "methods" are not HTTP
# A request line still growing past this many bytes is HTTP (the parser answers 414/400).
LONG_LINE = 2048
_VERSION = b" HTTP/1."

H1, H2, TLS, OPAQUE = "h1", "h2", "tls", "opaque"


def classify(data: bytes, http_only: bool = False) -> str | None:
    """What ``data`` (the connection's first bytes) starts. ``http_only``: the port is
    declared HTTP, so anything but the HTTP/2 preface goes to the HTTP/1.1 parser (which
    answers garbage with 400)."""
    if not data:
        return None
    n = len(data)
    m = min(n, len(H2_PREFACE))
    if data[:m] == H2_PREFACE[:m]:
        return H2 if n >= len(H2_PREFACE) else None
    if http_only:
        return H1
    if data[0] == 0x16:
        if n < 3:
            return None
        return TLS if data[1] == 0x03 else OPAQUE
    for meth in _METHODS:
        if data[:len(meth)] == meth[:n]:
            return H1 if n >= len(meth) else None
    return _request_line(data)


def _request_line(data: bytes) -> str | None:
    """H1 for ``TOKEN SP target SP HTTP/1.``; None while ``data`` is a prefix of one."""
    n = len(data)
    i = 0
    while i < n and data[i] in _TCHAR:
        i += 1
    if i == n:
        return None if i <= MAX_METHOD else OPAQUE
    if i == 0 or i > MAX_METHOD or data[i] != 0x20:
        return OPAQUE
    j = i + 1
    while j < n and 0x21 <= data[j] <= 0x7E:
        j += 1
    if j == n:
        return H1 if n >= LONG_LINE else None
    if j == i + 1:
        return OPAQUE  # two spaces, or a control byte, where the request target should be
    rest = data[j:j + len(_VERSION)]
    if rest != _VERSION[:len(rest)]:
        return OPAQUE
    return H1 if len(rest) == len(_VERSION) else None
