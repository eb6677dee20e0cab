"""Protocol detection from the first bytes of a connection (peeked, never consumed).

``classify`` answers "h1", "h2", "tls", "opaque", or None when more bytes are needed to tell.
The listener peeks with MSG_PEEK, so whatever is decided, the chosen handler reads the
connection from its first byte; nothing has to be replayed.
"""

from __future__ import annotations

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
            b"CONNECT ", b"TRACE ")
PEEK_BYTES = 4096  # enough for a ClientHello with ALPN in all practical cases

H1, H2, TLS, OPAQUE = "h1", "h2", "tls", "opaque"


def classify(data: bytes, http_only: bool = False) -> str | None:
    """What ``data`` (the connection's first bytes) starts. ``http_only``: the port is
    declared HTTP, so anything but the HTTP/2 preface goes to the HTTP/1.1 parser (which
    answers garbage with 400)."""
    if not data:
        return None
    n = len(data)
    if data[:n] == H2_PREFACE[:n]:
        return H2 if n >= len(H2_PREFACE) else None
    if http_only:
        return H1
    if data[0] == 0x16:
        if n < 3:
            return None
        return TLS if data[1] == 0x03 else OPAQUE
    for m in _METHODS:
        if data[:len(m)] == m[:n]:
            return H1 if n >= len(m) else None
    return OPAQUE
