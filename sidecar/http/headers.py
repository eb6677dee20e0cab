"""Header policy, written once for HTTP/1.1, HTTP/2 and gRPC.

- hop-by-hop (connection-specific) headers are removed, and so are headers named in
  ``Connection``; ``te`` is kept only as ``te: trailers`` (gRPC needs it end to end);
- ``x-request-id`` is added when the request has none (kept when it has one);
- inbound, ``x-forwarded-client-cert`` is what this proxy asserts about the verified peer:
  any copy the client sent is removed first, so only the proxy can assert an identity; a
  plaintext inbound request (no verified peer) gets none. Outbound it passes untouched.

The HTTP/1.1 relay builds its request head in one pass for speed and takes the sets and
helpers below; the pair-list functions serve HTTP/2 and the codecs. One difference is on
purpose: the HTTP/1.1 relay drops ``te`` entirely, because it does not relay HTTP/1.1
trailers, so ``te: trailers`` would promise the app something the hop cannot carry.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Headers = list[tuple[bytes, bytes]]

XFCC = b"x-forwarded-client-cert"
REQUEST_ID = b"x-request-id"
# Connection-specific headers (RFC 9110 7.6.1, RFC 9113 8.2.2).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"http2-settings",
})
# Headers only the mesh may assert to an app (a client's copy is removed inbound).
MESH_OWNED = frozenset({XFCC})
# Connection tokens that name no header to drop (or that must never be dropped).
CONN_KEYWORDS = frozenset({b"close", b"keep-alive", b"upgrade", b"", b"host"})


def request_id(_bits: Callable[[int], int] = random.getrandbits) -> bytes:
    """A random UUIDv4-shaped id.

    The Mersenne Twister, not os.urandom: no syscall per request, and a request id is not
    a secret.
    """
    b = b"%032x" % _bits(128)
    return b"%s-%s-4%s-%s-%s" % (b[:8], b[8:12], b[13:16], b[16:20], b[20:32])


def xfcc_value(local_identity: str | None, peer_identity: str | None) -> bytes | None:
    """The XFCC value an inbound proxy asserts for a verified peer (None: no peer)."""
    if not peer_identity:
        return None
    return b"By=%s;URI=%s" % ((local_identity or "").encode(), peer_identity.encode())


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names listed in one ``Connection`` value (lowercase), keywords excluded."""
    return {t.strip().lower() for t in value.split(b",")} - CONN_KEYWORDS


def request_headers(headers: Headers, inbound: bool, xfcc: bytes | None) -> Headers:
    """The request headers to forward: hop-by-hop removed, request id, XFCC rule.

    ``inbound``: this proxy fronts the app, so mesh-owned headers from the client are
    dropped and ``xfcc`` (from ``xfcc_value``) is set when there is a verified peer.
    """
    out: Headers = []
    named: set[bytes] | None = None
    has_id = False
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named = (named or set()) | connection_tokens(value)
            elif lname == b"te" and value.strip().lower() == b"trailers":
                out.append((name, value))
            continue
        if inbound and lname in MESH_OWNED:
            continue
        if lname == REQUEST_ID:
            has_id = True
        out.append((name, value))
    if named:  # rare: headers named in Connection are hop-by-hop too
        out = [(n, v) for n, v in out if n.lower() not in named]
    if not has_id:
        out.append((REQUEST_ID, request_id()))
    if xfcc is not None and inbound:
        out.append((XFCC, xfcc))
    return out


def response_headers(headers: Headers) -> Headers:
    """The response headers (or trailers) to forward: hop-by-hop removed."""
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named = (named or set()) | connection_tokens(value)
            continue
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out
