"""The HEADERS block of an HTTP/2 request, shared by both codecs; a module of its own so the
native codec does not load the pure-Python one (``h2``, ``hpack``, ``hyperframe``: about
1.2 MB of an idle proxy's RSS)."""

from __future__ import annotations

from .events import Headers, RequestHead


def request_block(head: RequestHead) -> Headers:
    """The HEADERS block of a request: pseudo-headers first, then the regular fields (both
    HTTP/2 codecs send it)."""
    if head.authority:
        return [(b":method", head.method), (b":scheme", head.scheme or b"http"),
                (b":authority", head.authority), (b":path", head.path), *head.headers]
    # HTTP/2 allows Host instead; an empty :authority would contradict it.
    return [(b":method", head.method), (b":scheme", head.scheme or b"http"),
            (b":path", head.path), *head.headers]
