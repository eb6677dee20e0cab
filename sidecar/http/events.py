"""Codec events: what a sans-IO HTTP codec turns bytes into, for the exchange layer.

Every codec (HTTP/1.1 on httptools, HTTP/2 on ``h2``, later HTTP/2 on libnghttp2) has the
same shape: ``feed(data) -> list[Event]`` parses what the peer sent, and ``send_*`` methods
append what we send to an output buffer that ``data_to_send()`` hands over (one write per
event-loop turn). There is no I/O and no asyncio in a codec.

Conventions shared by all codecs, so the exchange never asks which protocol it is on:

- ``stream_id``: HTTP/2's stream id; on HTTP/1.1 the codec numbers the exchanges on one
  connection 1, 3, 5, ... and reports pipelined requests as they are parsed; answering
  them one at a time, in order, is the owner's job (it holds a later stream's events until
  the earlier response is done).
- Header names and values are ``bytes``. HTTP/2 names are lowercase (the protocol says so);
  HTTP/1.1 names keep the case they came with (apps are case-blind, but byte-for-byte
  relay is what users expect) and policy code compares ``name.lower()``. Pseudo-headers
  never appear in ``headers``: they are the head's own fields (``method``, ``path``, ...).
- ``Data.flow`` is the number of flow-controlled bytes the event cost the peer (HTTP/2:
  data plus padding; HTTP/1.1: 0). The exchange passes it back with ``codec.ack(stream_id,
  flow)`` once the bytes were handed to the other side, so a slow reader stalls the sender
  through the window and nothing grows here.

The classes are slotted, positional-argument constructors with no validation: they are
created per request on the hot path.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

Headers = list[tuple[bytes, bytes]]

# HTTP/2 error codes (RFC 9113 7), used by StreamReset, GoAway and send_reset on every codec.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x2, 0x7, 0x8


class StreamGone(Exception):
    """Raised by a codec's ``send_*`` when the stream was reset or closed by the peer."""


class NoStreamAvailable(Exception):
    """Raised by ``send_request_head`` when the peer's stream limit is reached."""


class Event:
    """Base of every codec event (for isinstance checks and typing only)."""

    __slots__ = ()


class RequestHead(Event):
    """A request's head arrived (server codecs).

    ``authority`` is ``:authority`` (HTTP/2) or the Host header (HTTP/1.1; the header also
    stays in ``headers``). ``end_stream``: no body follows and no ``EndOfMessage`` will
    (HTTP/2 END_STREAM on HEADERS; HTTP/1.1 neither Content-Length above 0 nor chunked).
    ``keep_alive`` (HTTP/1.1): the client allows another request on this connection.
    ``upgrade``: the ``Upgrade`` header's value when the request asks to switch protocols
    (HTTP/1.1; ``b""`` otherwise; the header itself is hop-by-hop and left to the codecs);
    the server codec reports what follows as ``TunnelData``. ``http10``: an HTTP/1.0
    client (knows no chunked encoding).
    """

    __slots__ = ("stream_id", "method", "scheme", "authority", "path", "headers",
                 "end_stream", "keep_alive", "upgrade", "http10")

    def __init__(self, stream_id: int, method: bytes, scheme: bytes, authority: bytes,
                 path: bytes, headers: Headers, end_stream: bool = False,
                 keep_alive: bool = True, upgrade: bytes = b"", http10: bool = False) -> None:
        self.stream_id = stream_id
        self.method = method
        self.scheme = scheme
        self.authority = authority
        self.path = path
        self.headers = headers
        self.end_stream = end_stream
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.http10 = http10


class ResponseHead(Event):
    """A response's head arrived (client codecs); 1xx heads are interim (``status < 200``),
    101 on an upgrade request switches the connection to ``TunnelData``.

    ``reason`` is HTTP/1.1's reason phrase (empty on HTTP/2). ``keep_alive`` (HTTP/1.1): the
    server allows another request on this connection after this response.
    """

    __slots__ = ("stream_id", "status", "headers", "end_stream", "reason", "keep_alive")

    def __init__(self, stream_id: int, status: int, headers: Headers, end_stream: bool = False,
                 reason: bytes = b"", keep_alive: bool = True) -> None:
        self.stream_id = stream_id
        self.status = status
        self.headers = headers
        self.end_stream = end_stream
        self.reason = reason
        self.keep_alive = keep_alive


class Data(Event):
    """Body bytes of a message (already de-framed: no chunk sizes, no padding)."""

    __slots__ = ("stream_id", "data", "flow", "end_stream")

    def __init__(self, stream_id: int, data: bytes, flow: int = 0,
                 end_stream: bool = False) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow = flow
        self.end_stream = end_stream


class Trailers(Event):
    """Trailer fields; the message ends with them (``EndOfMessage`` is not sent as well)."""

    __slots__ = ("stream_id", "headers")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


class EndOfMessage(Event):
    """The message on ``stream_id`` is complete (HTTP/1.1 message end, HTTP/2 END_STREAM
    on a DATA frame). Not sent after a head with ``end_stream=True`` nor after
    ``Trailers``."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset(Event):
    """The peer reset one stream (HTTP/2 RST_STREAM; ``code`` is the HTTP/2 error code)."""

    __slots__ = ("stream_id", "code")

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code


class WindowOpen(Event):
    """More may be sent now: a WINDOW_UPDATE or a SETTINGS change grew a send window.

    ``stream_id`` 0 means the connection (every blocked stream may proceed).
    """

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class GoAway(Event):
    """The peer will open (server) or accept (client) no more streams.

    Streams above ``last_stream_id`` were never processed and may be retried elsewhere;
    ``code`` 0 (NO_ERROR) means the streams up to it finish normally.
    """

    __slots__ = ("last_stream_id", "code")

    def __init__(self, last_stream_id: int, code: int) -> None:
        self.last_stream_id = last_stream_id
        self.code = code


class ProtocolError(Event):
    """The peer broke the protocol; the connection is unusable after it.

    Server codecs have already queued what to answer (HTTP/1.1: a ``status`` reply with
    ``connection: close``; HTTP/2: GOAWAY PROTOCOL_ERROR): the owner writes
    ``data_to_send()`` and closes. ``status`` is the HTTP status the HTTP/1.1 server codec
    answered (400 or 431); 0 where no status was sent (client codecs, HTTP/2).
    """

    __slots__ = ("message", "status")

    def __init__(self, message: str, status: int = 400) -> None:
        self.message = message
        self.status = status


class TunnelData(Event):
    """Bytes after a protocol switch (HTTP/1.1 ``101`` to an ``Upgrade``), not HTTP any more.

    The first one carries whatever followed the switch in the same read (may be empty).
    """

    __slots__ = ("stream_id", "data")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data


@runtime_checkable
class ServerCodec(Protocol):
    """The server end of a connection (downstream): requests in, responses out.

    ``send_*`` raise ``StreamGone`` for a stream the peer reset or closed.
    """

    def feed(self, data: bytes) -> list[Event]:
        """Parse bytes from the client; the events they complete, in order."""

    def start_response(self, head: RequestHead) -> None:
        """Say which request the next response answers (HTTP/1.1 frames it by the request's
        method and version; HTTP/2 needs nothing)."""

    def send_response_head(self, stream_id: int, status: int, headers: Headers,
                           end_stream: bool = False, reason: bytes = b"") -> None:
        """Queue a response head (1xx interim heads too); ``end_stream``: no body."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue body bytes; at most ``send_window(stream_id)`` of them."""

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Queue trailers and end the message."""

    def send_end(self, stream_id: int) -> None:
        """End the message without trailers."""

    def send_reset(self, stream_id: int, code: int) -> None:
        """Abort one stream (HTTP/1.1: the connection must be closed by the owner)."""

    def send_goaway(self) -> None:
        """Graceful shutdown: streams seen so far finish, new ones are refused."""

    def send_window(self, stream_id: int) -> int:
        """How many body bytes ``send_data`` may take on this stream now."""

    def ack(self, stream_id: int, flow: int) -> None:
        """Give ``flow`` bytes of receive window back to the peer (see ``Data.flow``)."""

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (one transport write)."""

    def peer_max_streams(self) -> int:
        """How many concurrent streams the peer accepts (HTTP/1.1: 1)."""


@runtime_checkable
class ClientCodec(Protocol):
    """The client end of a connection (upstream): requests out, responses in.

    ``send_*`` raise ``StreamGone`` for a stream the peer reset or closed, and
    ``send_request_head`` raises ``NoStreamAvailable`` at the peer's stream limit.
    """

    def feed(self, data: bytes) -> list[Event]:
        """Parse bytes from the server; the events they complete, in order."""

    def send_request_head(self, head: RequestHead) -> int:
        """Queue a request head; returns the stream id that carries it."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue body bytes; at most ``send_window(stream_id)`` of them."""

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Queue trailers and end the request."""

    def send_end(self, stream_id: int) -> None:
        """End the request without trailers."""

    def send_reset(self, stream_id: int, code: int) -> None:
        """Abort one stream."""

    def send_window(self, stream_id: int) -> int:
        """How many body bytes ``send_data`` may take on this stream now."""

    def ack(self, stream_id: int, flow: int) -> None:
        """Give ``flow`` bytes of receive window back to the peer (see ``Data.flow``)."""

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (one transport write)."""

    def peer_max_streams(self) -> int:
        """How many concurrent streams the peer accepts (HTTP/1.1: 1)."""
