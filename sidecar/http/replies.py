"""Local replies: the responses the proxy answers itself, identical on every protocol.

The body is the message as Envoy writes it (no trailing newline), ``text/plain``. A gRPC caller (``content-type:
application/grpc...``) instead gets a trailers-only response whose ``grpc-status`` maps the
HTTP status as Envoy does (504 is DEADLINE_EXCEEDED: the route timeout expired) and whose
``grpc-message`` is the message.
"""

from __future__ import annotations

from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}  # for status lines we write
# HTTP status → gRPC status code (Envoy's httpToGrpcStatus, except 504 as above).
GRPC_STATUS = {400: b"13", 401: b"16", 403: b"7", 404: b"12", 429: b"14", 502: b"14",
               503: b"14", 504: b"4"}
GRPC_UNKNOWN = b"2"
NO_HEALTHY_UPSTREAM = "no healthy upstream"
UPSTREAM_TIMEOUT = "upstream request timeout"
UPSTREAM_RESET = "upstream connect error or disconnect/reset before headers"


def is_grpc(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.startswith(b"application/grpc")


def body(message: str) -> bytes:
    return message.encode()


def reason(status: int) -> bytes:
    return REASONS.get(status, b"Error")


def plain_headers(status: int, message: str) -> tuple[Headers, bytes]:
    """Headers (no pseudo-headers) and body of a plain local reply."""
    b = body(message)
    return [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(b))], b


def grpc_headers(status: int, message: str) -> Headers:
    """The single HEADERS frame of a trailers-only gRPC local reply (no pseudo-headers)."""
    return [(b"content-type", b"application/grpc"),
            (b"grpc-status", GRPC_STATUS.get(status, GRPC_UNKNOWN)),
            (b"grpc-message", message.encode())]
