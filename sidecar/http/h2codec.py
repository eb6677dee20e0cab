"""Sans-IO HTTP/2 codecs on ``h2``: bytes → events (``events.py``), events → bytes.

One class serves both ends (``H2Codec(client_side=...)``): HTTP/2 is symmetric apart from
who opens streams. Flow control is manual: a ``Data`` event's ``flow`` is given back with
``ack()`` only once the bytes were handed on, so a slow reader stalls its sender through
the window; ``send_window()`` tells how much may be sent on a stream now.

A libnghttp2 codec (issue 15) implements the same methods and events.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from . import limits
from .events import (
    Data,
    EndOfMessage,
    Event,
    GoAway,
    Headers,
    NoStreamAvailable,
    ProtocolError,
    RequestHead,
    ResponseHead,
    StreamGone,
    StreamReset,
    Trailers,
    WindowOpen,
)
from .h2block import request_block

STREAM_WINDOW = 65_535  # per-stream receive window we advertise (the HTTP/2 default)
CONN_WINDOW = 1 << 21  # connection receive window: a few stalled streams do not block the rest
# A stream that is gone (reset or closed by its peer): what touching it raises in h2.
STREAM_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
               h2.exceptions.FlowControlError, KeyError)


def h2_config(client_side: bool) -> h2.config.H2Configuration:
    # Headers stay bytes end to end; inbound validation guards us, outbound would re-check
    # what we just validated (or copied from a validated peer) at a CPU cost.
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


def h2_settings(client_side: bool) -> h2.settings.Settings:
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.current().max_concurrent_streams,
    }
    if client_side:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    return h2.settings.Settings(client=client_side, initial_values=values)


class GracefulH2Connection(h2.connection.H2Connection):
    """h2 with graceful GOAWAY both ways (RFC 9113 6.8: streams up to last-stream-id finish).

    Stock h2 (4.x) moves to CLOSED on any GOAWAY, rejects every later frame (even a PING in
    the same read) and drops its unsent output. Here the state and the output survive a
    NO_ERROR GOAWAY; new streams are refused by the owner's own bookkeeping instead.
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state, unsent = self.state_machine.state, self._data_to_send
        result = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            self.state_machine.state, self._data_to_send = state, unsent
        return result

    def send_goaway(self, last_stream_id: int) -> None:
        state = self.state_machine.state
        self.close_connection(ErrorCodes.NO_ERROR, last_stream_id=last_stream_id)
        self.state_machine.state = state


def split_request_head(stream_id: int, headers: Headers, end_stream: bool) -> RequestHead:
    """A ``RequestHead`` from HTTP/2 request headers (pseudo-headers become its fields)."""
    method = scheme = authority = path = b""
    regular: Headers = []
    for name, value in headers:
        if name[:1] != b":":
            regular.append((name, value))
        elif name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif name == b":scheme":
            scheme = value
    return RequestHead(stream_id, method, scheme, authority, path, regular, end_stream)


def split_response_head(stream_id: int, headers: Headers, end_stream: bool) -> ResponseHead:
    status = 0
    regular: Headers = []
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            regular.append((name, value))
    return ResponseHead(stream_id, status, regular, end_stream)


class H2Codec:
    """One HTTP/2 connection end, sans IO. The connection preface is queued at once."""

    def __init__(self, client_side: bool) -> None:
        self.client_side = client_side
        conn = self.conn = GracefulH2Connection(h2_config(client_side))
        conn.local_settings = h2_settings(client_side)
        conn.initiate_connection()
        conn.increment_flow_control_window(CONN_WINDOW - 65_535)
        self.goaway_sent = False
        self.last_stream_id = 0  # server: the highest stream a graceful GOAWAY let finish
        self.control = limits.ControlFrameBudget(limits.current())  # PING/SETTINGS flood
        self.failed = False

    # -- bytes in ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        if self.failed:
            return []
        try:
            h2_events: list[Any] = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.failed = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(ErrorCodes.PROTOCOL_ERROR)
            return [ProtocolError(f"HTTP/2 protocol error: {e}", 400 if not self.client_side else 0)]
        acks = sum(1 for ev in h2_events
                   if type(ev) is h2.events.PingReceived or type(ev) is h2.events.RemoteSettingsChanged)
        if acks and self.control.add(acks):
            # Envoy's (and nghttp2's) outbound control-frame limit: the acks are dropped.
            self.failed = True
            self.conn.clear_outbound_data_buffer()
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            return [ProtocolError("HTTP/2 control frame flood: too many PING/SETTINGS frames",
                                  400 if not self.client_side else 0)]
        out: list[Event] = []
        ended_with_head: set[int] | None = None  # streams whose END_STREAM is already told
        for ev in h2_events:
            t = type(ev)
            if t is h2.events.DataReceived:
                out.append(Data(ev.stream_id, ev.data, ev.flow_controlled_length))
            elif t is h2.events.StreamEnded:
                if ended_with_head is None or ev.stream_id not in ended_with_head:
                    out.append(EndOfMessage(ev.stream_id))
            elif t is h2.events.RequestReceived or t is h2.events.ResponseReceived \
                    or t is h2.events.TrailersReceived:
                end = ev.stream_ended is not None
                if end:
                    ended_with_head = ended_with_head or set()
                    ended_with_head.add(ev.stream_id)
                if t is h2.events.RequestReceived:
                    out.append(split_request_head(ev.stream_id, ev.headers, end))
                elif t is h2.events.ResponseReceived:
                    out.append(split_response_head(ev.stream_id, ev.headers, end))
                else:
                    out.append(Trailers(ev.stream_id, ev.headers))
            elif t is h2.events.InformationalResponseReceived:
                out.append(split_response_head(ev.stream_id, ev.headers, False))
            elif t is h2.events.StreamReset:
                out.append(StreamReset(ev.stream_id, int(ev.error_code)))
            elif t is h2.events.WindowUpdated:
                out.append(WindowOpen(ev.stream_id))
            elif t is h2.events.RemoteSettingsChanged:
                out.append(WindowOpen(0))  # INITIAL_WINDOW_SIZE may have grown every stream
            elif t is h2.events.ConnectionTerminated:
                last = ev.last_stream_id if ev.last_stream_id is not None else 0
                out.append(GoAway(last, int(ev.error_code)))
        return out

    # -- bytes out (h2's exceptions become the codec interface's StreamGone) ------------
    def send_request_head(self, head: RequestHead) -> int:
        """Open a stream for ``head``; ``NoStreamAvailable`` at the peer's stream limit."""
        conn = self.conn
        headers = request_block(head)
        try:
            sid: int = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=head.end_stream)
        except h2.exceptions.TooManyStreamsError as e:
            raise NoStreamAvailable(str(e)) from e
        return sid

    def start_response(self, head: RequestHead) -> None:
        pass  # HTTP/2 frames every response the same way

    def send_response_head(self, stream_id: int, status: int, headers: Headers,
                           end_stream: bool = False, reason: bytes = b"") -> None:
        try:
            self.conn.send_headers(stream_id, [(b":status", b"%d" % status), *headers],
                                   end_stream=end_stream)
        except STREAM_GONE as e:
            raise StreamGone(stream_id) from e

    def send_window(self, stream_id: int) -> int:
        try:
            return int(self.conn.local_flow_control_window(stream_id))
        except STREAM_GONE as e:
            raise StreamGone(stream_id) from e

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` (at most ``send_window``), split into frames of the peer's size."""
        conn = self.conn
        size = conn.max_outbound_frame_size
        try:
            if len(data) <= size:
                conn.send_data(stream_id, data, end_stream=end_stream)
                return
            view = memoryview(data)
            for i in range(0, len(data), size):
                last = i + size >= len(data)
                conn.send_data(stream_id, bytes(view[i:i + size]), end_stream=end_stream and last)
        except STREAM_GONE as e:
            raise StreamGone(stream_id) from e

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        try:
            self.conn.send_headers(stream_id, headers, end_stream=True)
        except STREAM_GONE as e:
            raise StreamGone(stream_id) from e

    def send_end(self, stream_id: int) -> None:
        try:
            self.conn.end_stream(stream_id)
        except STREAM_GONE as e:
            raise StreamGone(stream_id) from e

    def send_reset(self, stream_id: int, code: int) -> None:
        with contextlib.suppress(*STREAM_GONE):
            self.conn.reset_stream(stream_id, code)

    def send_goaway(self) -> None:
        """Graceful GOAWAY: streams opened so far finish, new ones are refused."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self.last_stream_id = self.conn.highest_inbound_stream_id
        self.conn.send_goaway(self.last_stream_id)

    def ack(self, stream_id: int, flow: int) -> None:
        if flow:
            with contextlib.suppress(*STREAM_GONE):
                self.conn.acknowledge_received_data(flow, stream_id)

    def peer_max_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    def data_to_send(self) -> bytes:
        self.control.written()
        return bytes(self.conn.data_to_send())
