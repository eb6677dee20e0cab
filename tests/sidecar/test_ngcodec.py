"""The libnghttp2 codec against the h2 codec (the oracle): same bytes in, same events out.

No sockets and no root: a peer made of the other codec produces the bytes, both codecs
under test parse them, and their events are compared field by field. Flood protections
are driven with frames built by hyperframe.
"""

from __future__ import annotations

import pytest
from hyperframe.frame import HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http import ngcodec
from sidecar.http.events import (
    Data,
    EndOfMessage,
    GoAway,
    ProtocolError,
    RequestHead,
    ResponseHead,
    StreamReset,
    Trailers,
    WindowOpen,
)
from sidecar.http.h2codec import H2Codec

pytestmark = pytest.mark.skipif(not ngcodec.available(),
                                reason="native HTTP/2 codec not built (libnghttp2-dev, Cython)")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def norm(events):
    """Comparable form of events; WindowOpen is left out (codecs differ in how often)."""
    out = []
    data: dict[int, bytes] = {}
    for ev in events:
        if isinstance(ev, WindowOpen):
            continue
        if isinstance(ev, Data):  # frame boundaries may differ: compare the bytes per stream
            data[ev.stream_id] = data.get(ev.stream_id, b"") + ev.data
            continue
        if isinstance(ev, RequestHead):
            out.append(("req", ev.stream_id, ev.method, ev.scheme, ev.authority, ev.path,
                        ev.headers, ev.end_stream))
        elif isinstance(ev, ResponseHead):
            out.append(("resp", ev.stream_id, ev.status, ev.headers, ev.end_stream))
        elif isinstance(ev, Trailers):
            out.append(("trailers", ev.stream_id, ev.headers))
        elif isinstance(ev, EndOfMessage):
            out.append(("end", ev.stream_id))
        elif isinstance(ev, StreamReset):
            out.append(("reset", ev.stream_id, ev.code))
        elif isinstance(ev, GoAway):
            out.append(("goaway", ev.last_stream_id, ev.code))
        else:
            out.append((type(ev).__name__,))
    return out, data


def pump(a, b, rounds=20):
    """Move bytes both ways until quiet; the events each side saw."""
    seen_a, seen_b = [], []
    for _ in range(rounds):
        moved = False
        d = a.data_to_send()
        if d:
            seen_b += b.feed(d)
            moved = True
        d = b.data_to_send()
        if d:
            seen_a += a.feed(d)
            moved = True
        if not moved:
            break
    return seen_a, seen_b


GRPC_REQUEST = RequestHead(0, b"POST", b"http", b"grpc.svc:50051", b"/pkg.Svc/Call",
                           [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                            (b"x-meta-bin", b"AAEC"), (b"x-request-id", b"abc")], False)
GET_REQUEST = RequestHead(0, b"GET", b"http", b"web:80", b"/path?q=1",
                          [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], True)


@pytest.mark.parametrize("head,body,trailers", [
    (GET_REQUEST, b"", None),
    (GRPC_REQUEST, b"\x00\x00\x00\x00\x05hello", [(b"x-req-trailer", b"1")]),
    (GRPC_REQUEST, b"x" * 50_000, None),
])
def test_server_codecs_parse_the_same_requests(head, body, trailers):
    results = []
    for server in (H2Codec(client_side=False), ngcodec.NgH2Codec(client_side=False)):
        client = H2Codec(client_side=True)
        pump(client, server)
        sid = client.send_request_head(head)
        if body:
            client.send_data(sid, body)
        if trailers:
            client.send_trailers(sid, trailers)
        elif not head.end_stream:
            client.send_end(sid)
        _, seen = pump(client, server)
        results.append(norm(seen))
    assert results[0] == results[1]
    assert results[1][0][0][0] == "req"


@pytest.mark.parametrize("status,headers,body,trailers,end_with_head", [
    (200, [(b"content-type", b"text/plain")], b"hello", None, False),
    (200, [(b"content-type", b"application/grpc")], b"\x00\x00\x00\x00\x01x",
     [(b"grpc-status", b"0"), (b"grpc-message", b"")], False),
    # gRPC trailers-only response: one HEADERS frame with END_STREAM.
    (200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")], b"", None, True),
    (204, [], b"", None, True),
])
def test_client_codecs_parse_the_same_responses(status, headers, body, trailers, end_with_head):
    results = []
    for client in (H2Codec(client_side=True), ngcodec.NgH2Codec(client_side=True)):
        server = H2Codec(client_side=False)
        pump(client, server)
        sid = client.send_request_head(GET_REQUEST)
        pump(client, server)
        server.send_response_head(sid, 100, [])
        server.send_response_head(sid, status, headers, end_stream=end_with_head)
        if body:
            server.send_data(sid, body)
        if trailers:
            server.send_trailers(sid, trailers)
        elif not end_with_head:
            server.send_end(sid)
        seen, _ = pump(client, server)
        results.append(norm(seen))
    assert results[0] == results[1]


def test_native_server_replies_are_read_the_same_by_the_oracle():
    """What the native codec sends (1xx, headers, DATA, trailers, reset) decodes as sent."""
    client = H2Codec(client_side=True)
    server = ngcodec.NgH2Codec(client_side=False)
    pump(client, server)
    s1 = client.send_request_head(GRPC_REQUEST)
    client.send_end(s1)
    s2 = client.send_request_head(GET_REQUEST)
    pump(client, server)
    server.send_response_head(s1, 200, [(b"content-type", b"application/grpc")])
    server.send_data(s1, b"\x00\x00\x00\x00\x02hi")
    server.send_trailers(s1, [(b"grpc-status", b"0")])
    server.send_reset(s2, 8)
    seen, _ = pump(client, server)
    events, data = norm(seen)
    assert ("resp", s1, 200, [(b"content-type", b"application/grpc")], False) in events
    assert ("trailers", s1, [(b"grpc-status", b"0")]) in events
    assert ("reset", s2, 8) in events
    assert data[s1] == b"\x00\x00\x00\x00\x02hi"


def test_flow_control_is_manual_and_bounded():
    """Unacknowledged DATA stops the sender at the window; an ack lets it go on."""
    client = ngcodec.NgH2Codec(client_side=True)
    server = ngcodec.NgH2Codec(client_side=False)
    pump(client, server)
    sid = client.send_request_head(GET_REQUEST)
    pump(client, server)
    server.send_response_head(sid, 200, [])
    window = server.send_window(sid)
    assert window == 65_535
    server.send_data(sid, b"x" * window)
    assert server.send_window(sid) == 0  # queued up to the window: nothing more may go
    seen, _ = pump(client, server)
    got = sum(len(e.data) for e in seen if isinstance(e, Data))
    assert got == window
    assert server.send_window(sid) == 0  # the client has not acknowledged anything
    client.ack(sid, got)
    pump(client, server)
    assert server.send_window(sid) == 65_535


def _client_preface() -> bytes:
    return PREFACE + SettingsFrame(0).serialize()


def _headers(sid: int, end: bool = True) -> bytes:
    import hpack
    block = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"),
                                    (b":authority", b"a"), (b":path", b"/")])
    f = HeadersFrame(sid, block)
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def test_rapid_reset_closes_the_connection():
    """HEADERS + RST_STREAM in a burst (CVE-2023-44487): GOAWAY long before 20,000 requests."""
    server = ngcodec.NgH2Codec(client_side=False)
    server.feed(_client_preface())
    requests = 0
    failed = False
    for sid in range(1, 40_000, 2):
        events = server.feed(_headers(sid, end=False) + RstStreamFrame(sid, 8).serialize())
        requests += sum(isinstance(e, RequestHead) for e in events)
        if any(isinstance(e, ProtocolError) for e in events):
            failed = True
            break
    assert failed and requests <= 1_100
    assert b"\x07" in server.data_to_send()[3:4] or server.failed  # a GOAWAY frame, or closed


def test_ping_flood_closes_the_connection():
    """PINGs whose ACKs are never read: the connection ends instead of queuing ACKs."""
    server = ngcodec.NgH2Codec(client_side=False)
    server.feed(_client_preface())
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    sent = 0
    while sent < 50_000:
        events = server.feed(ping * 10)
        sent += 10
        if any(isinstance(e, ProtocolError) for e in events):
            break
    else:
        pytest.fail("50,000 unread PING ACKs were queued")
    assert sent <= 1_100


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(blob):
    server = ngcodec.NgH2Codec(client_side=False)
    for chunk in (_client_preface() + blob, blob):
        events = server.feed(chunk)
        assert all(not isinstance(e, RequestHead) or e.method for e in events)
        server.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=200))
def test_mutated_requests_never_raise(noise, where):
    client = H2Codec(client_side=True)
    wire = client.data_to_send()
    client.send_request_head(GRPC_REQUEST)
    wire += client.data_to_send()
    where = min(where, len(wire))
    mutated = wire[:where] + noise + wire[where:]
    server = ngcodec.NgH2Codec(client_side=False)
    events = server.feed(mutated)
    for e in events:
        if isinstance(e, RequestHead):  # whatever got through is a whole, validated request
            assert e.method and e.path
    server.data_to_send()
