"""Sans-IO HTTP/2 codec on libnghttp2 (``sidecar.native._nghttp2``), same interface as
``h2codec.H2Codec``: bytes → events (``events.py``), events → bytes.

The binding records nghttp2's per-frame and per-header callbacks in C and hands over one
list per ``feed`` of the shared events, built by the binding itself (``set_events``).
Flow control is manual as in the ``h2`` codec: ``ack()`` gives window back once the bytes
were handed on, and ``send_window()`` bounds what may be queued on a stream.

nghttp2's own flood protections are on: the SETTINGS/PING ACK backlog (1,000), SETTINGS
entries per frame (32), CONTINUATION frames per header block (8) and, on the server side,
the rapid-reset token bucket (CVE-2023-44487: 1,000 burst, 33/s). Tripping one ends the
connection with GOAWAY and a ``ProtocolError`` event.
"""

from __future__ import annotations

from . import limits
from .events import (
    Data,
    EndOfMessage,
    Event,
    GoAway,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseHead,
    StreamGone,
    StreamReset,
    Trailers,
    WindowOpen,
)
from .h2block import request_block

try:
    from sidecar.native import _nghttp2 as native
except ImportError:  # the extension was not built: the h2 codec is used instead
    native = None  # type: ignore[assignment]

STREAM_WINDOW = 65_535
CONN_WINDOW = 1 << 21
_STATUS: dict[int, tuple[bytes, bytes]] = {}  # status -> its :status field, made once


def available() -> bool:
    return native is not None


def library_version() -> str:
    return native.library_version() if native is not None else ""


class NgH2Codec:
    """One HTTP/2 connection end on libnghttp2, sans IO. The preface is queued at once."""

    __slots__ = ("client_side", "session", "goaway_sent", "last_stream_id", "failed", "out")

    def __init__(self, client_side: bool) -> None:
        if native is None:
            raise RuntimeError("the native HTTP/2 codec is not built")
        self.client_side = client_side
        lim = limits.current()  # nghttp2 enforces the stream and control-frame limits itself
        self.session = native.Session(client_side, STREAM_WINDOW, lim.max_concurrent_streams,
                                      CONN_WINDOW,
                                      max_outbound_ack=lim.max_outbound_control_frames)
        # The binding builds the shared events itself: no Python per frame here.
        self.session.set_events(RequestHead, ResponseHead, Trailers, Data, EndOfMessage,
                                StreamReset, GoAway, WindowOpen)
        self.goaway_sent = False
        self.last_stream_id = 0  # server: the highest stream a graceful GOAWAY let finish
        self.failed = False
        self.out = b""  # serialised by feed() already, handed over by data_to_send()

    # -- bytes in ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        session = self.session
        try:
            out: list[Event] = session.receive(data)  # the events, built by the binding
        except native.Nghttp2Error as e:
            self.failed = True
            return [ProtocolError(f"HTTP/2 protocol error: {e}", 0 if self.client_side else 400)]
        if session.resets_received and not self.client_side:
            session.resets_received = 0
            # nghttp2 answers a rapid-reset burst with a GOAWAY of its own, found only by
            # serialising: do it now, so the owner learns in this turn that the connection
            # is over (and closes it, as Envoy does).
            failed = self.failed
            self.out = self.data_to_send()  # includes what was pending before
            if session.goaway_error_sent > 0 and not failed:
                self.failed = True
                out.append(ProtocolError("HTTP/2 rapid reset: too many streams reset early", 400))
        return out

    # -- bytes out (the binding's StreamGoneError becomes the interface's StreamGone) --
    def send_request_head(self, head: RequestHead) -> int:
        """Open a stream for ``head``; beyond the peer's stream limit nghttp2 queues it."""
        sid: int = self.session.send_request(request_block(head), head.end_stream)
        return sid

    def send_response_head(self, stream_id: int, status: int, headers: Headers,
                           end_stream: bool = False, reason: bytes = b"") -> None:
        pseudo = _STATUS.get(status)
        if pseudo is None:
            pseudo = _STATUS[status] = (b":status", b"%d" % status)
        block = [pseudo, *headers]
        try:
            if status < 200:
                self.session.send_informational(stream_id, block)
            else:
                self.session.send_response(stream_id, block, end_stream)
        except native.StreamGoneError as e:
            raise StreamGone(stream_id) from e

    def send_window(self, stream_id: int) -> int:
        try:
            w: int = self.session.send_window(stream_id)
        except native.StreamGoneError as e:
            raise StreamGone(stream_id) from e
        return w

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        session = self.session
        try:
            session.send_data(stream_id, data)
            if end_stream:
                session.end_stream(stream_id)
        except native.StreamGoneError as e:
            raise StreamGone(stream_id) from e

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        try:
            self.session.end_stream(stream_id, headers)
        except native.StreamGoneError as e:
            raise StreamGone(stream_id) from e

    def send_end(self, stream_id: int) -> None:
        try:
            self.session.end_stream(stream_id)
        except native.StreamGoneError as e:
            raise StreamGone(stream_id) from e

    def send_reset(self, stream_id: int, code: int) -> None:
        # nghttp2 drops a stream's HEADERS not serialised yet when RST_STREAM is submitted
        # for it; a local reply followed by a reset (stop the request body) must keep its
        # response, as on the wire in that order.
        try:
            self.out += self.session.data_to_send()
        except native.Nghttp2Error:
            self.failed = True
        self.session.reset(stream_id, code)

    def send_goaway(self) -> None:
        """Graceful GOAWAY: streams opened so far finish, new ones are refused."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self.last_stream_id = self.session.last_stream_id
        self.session.goaway(0, self.last_stream_id)

    def ack(self, stream_id: int, flow: int) -> None:
        if flow:
            self.session.consume(stream_id, flow)

    def data_to_send(self) -> bytes:
        try:
            data: bytes = self.session.data_to_send()
        except native.Nghttp2Error:
            self.failed = True
            data = b""
        if self.session.goaway_error_sent > 0:  # nghttp2 ended the connection (a flood, a
            self.failed = True  # stream limit): the owner closes once this is written
        if self.out:
            data, self.out = self.out + data, b""
        return data

    def peer_max_streams(self) -> int:
        n: int = self.session.remote_max_concurrent_streams
        return n
