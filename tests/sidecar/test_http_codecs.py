"""The sans-IO codecs and the shared header policy, without sockets or root: bytes in →
events out, events in → bytes out (in the manner of mitmproxy's layer Playbook tests)."""

from __future__ import annotations

import pytest

from sidecar.http import events as ev
from sidecar.http import replies
from sidecar.http.h1 import H1ClientCodec, H1ServerCodec
from sidecar.http.h2codec import H2Codec
from sidecar.http.headers import XFCC, request_headers, response_headers, xfcc_value

PEER = "spiffe://cluster.local/ns/a/sa/client"
ME = "spiffe://cluster.local/ns/b/sa/server"


def test_every_codec_implements_the_interface() -> None:
    # What a new codec (libnghttp2) is held to as well: the methods the relays call.
    assert isinstance(H1ServerCodec(), ev.ServerCodec) and isinstance(H1ClientCodec(), ev.ClientCodec)
    assert isinstance(H2Codec(client_side=False), ev.ServerCodec)
    assert isinstance(H2Codec(client_side=True), ev.ClientCodec)


def kinds(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- HTTP/1.1 server codec ------------------------------------------------------------------
def test_h1_get_is_one_head_that_ends_the_message() -> None:
    c = H1ServerCodec()
    out = c.feed(b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Y: z\r\n\r\n")
    assert kinds(out) == ["RequestHead"]
    head = out[0]
    assert isinstance(head, ev.RequestHead)
    assert (head.stream_id, head.method, head.authority, head.path) == (1, b"GET", b"web", b"/a?b=1")
    assert head.headers == [(b"Host", b"web"), (b"X-Y", b"z")]  # case kept on HTTP/1.1
    assert head.end_stream and head.keep_alive and not head.upgrade and not head.http10


def test_h1_bodies_are_deframed() -> None:
    c = H1ServerCodec()
    out = c.feed(b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello")
    assert kinds(out) == ["RequestHead", "Data", "EndOfMessage"]
    assert out[1].data == b"hello" and out[1].flow == 0  # type: ignore[attr-defined]
    out = c.feed(b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    assert kinds(out) == ["RequestHead", "Data", "Data", "Trailers"]
    assert {e.stream_id for e in out} == {3}  # type: ignore[attr-defined]
    assert out[3].headers == [(b"X-Sum", b"5")]  # type: ignore[attr-defined]


def test_h1_pipelined_requests_get_their_own_stream_ids() -> None:
    out = H1ServerCodec().feed(b"GET /1 HTTP/1.1\r\nHost: w\r\n\r\nGET /2 HTTP/1.1\r\nHost: w\r\n\r\n")
    assert [(e.stream_id, e.path) for e in out] == [(1, b"/1"), (3, b"/2")]  # type: ignore[attr-defined]


SMUGGLING = {
    "cl and te": b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "repeated cl": b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "non-numeric cl": b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: +3\r\n\r\nabc",
    "te not chunked": b"POST / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "repeated host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\nX: a\r\n\r\n",  # over-limit heads: test_attacks_codecs.py
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_h1_ambiguous_requests_are_refused_with_400_and_never_surface(raw: bytes) -> None:
    c = H1ServerCodec()
    out = c.feed(raw)
    assert kinds(out) == ["ProtocolError"] and out[0].status == 400  # type: ignore[attr-defined]
    reply = c.data_to_send()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close\r\n" in reply
    assert c.feed(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n") == []  # the connection is done
    assert not c.keep_alive


def test_h1_upgrade_turns_the_rest_into_tunnel_bytes() -> None:
    c = H1ServerCodec()
    out = c.feed(b"GET /ws HTTP/1.1\r\nHost: w\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00")
    assert kinds(out) == ["RequestHead", "TunnelData"]
    assert out[0].upgrade == b"websocket"  # type: ignore[attr-defined]
    assert out[1].data == b"\x81\x00"  # type: ignore[attr-defined]
    assert kinds(c.feed(b"more")) == ["TunnelData"]


def _respond(request: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes | None,
             end_stream: bool = False) -> bytes:
    c = H1ServerCodec()
    head = c.feed(request)[0]
    assert isinstance(head, ev.RequestHead)
    c.start_response(head)
    c.send_response_head(head.stream_id, status, headers, end_stream)
    if body is not None:
        c.send_data(head.stream_id, body, end_stream=True)
    return c.data_to_send()


GET = b"GET / HTTP/1.1\r\nHost: w\r\n\r\n"


def test_h1_response_framing() -> None:
    # A length stays; a body without one is re-chunked; an empty end is a zero length.
    assert _respond(GET, 200, [(b"content-length", b"2")], b"ok") == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert _respond(GET, 200, [], b"ok") == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert _respond(GET, 204, [], None, end_stream=True) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert _respond(GET, 200, [], None, end_stream=True) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    # HTTP/1.0 knows no chunks: the body ends with the connection.
    assert _respond(b"GET / HTTP/1.0\r\n\r\n", 200, [], b"ok") == (
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nok")
    assert b"connection: close" in _respond(
        b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n", 200, [(b"content-length", b"0")], b"")


# -- HTTP/1.1 client codec ------------------------------------------------------------------
def test_h1_client_frames_requests_and_parses_responses() -> None:
    c = H1ClientCodec()
    head = ev.RequestHead(1, b"POST", b"http", b"w", b"/up", [(b"host", b"w")])
    sid = c.send_request_head(head)
    c.send_data(sid, b"abc")
    c.send_end(sid)
    assert c.data_to_send() == (b"POST /up HTTP/1.1\r\nhost: w\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"3\r\nabc\r\n0\r\n\r\n")
    out = c.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert kinds(out) == ["ResponseHead", "ResponseHead", "Data", "EndOfMessage"]
    assert [out[0].status, out[1].status, out[1].reason] == [100, 201, b"Created"]  # type: ignore[attr-defined]
    assert out[1].keep_alive  # type: ignore[attr-defined]


def test_h1_client_head_response_ends_at_its_head_and_is_not_reused() -> None:
    c = H1ClientCodec()
    c.send_request_head(ev.RequestHead(1, b"HEAD", b"http", b"w", b"/", [], True))
    out = c.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert kinds(out) == ["ResponseHead"]
    assert out[0].end_stream and not out[0].keep_alive  # type: ignore[attr-defined]


def test_h1_client_switches_to_a_tunnel_on_101() -> None:
    c = H1ClientCodec()
    c.send_request_head(ev.RequestHead(1, b"GET", b"http", b"w", b"/ws", [], True, upgrade=b"websocket"))
    assert b"upgrade: websocket\r\nconnection: upgrade\r\n" in c.data_to_send()
    out = c.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00")
    assert kinds(out) == ["ResponseHead", "TunnelData"] and out[1].data == b"\x81\x00"  # type: ignore[attr-defined]


def test_h1_client_refuses_garbage_and_endless_heads() -> None:
    c = H1ClientCodec()
    c.send_request_head(ev.RequestHead(1, b"GET", b"http", b"w", b"/", [], True))
    assert kinds(c.feed(b"SSH-2.0-x\r\n")) == ["ProtocolError"]
    c = H1ClientCodec(max_head=1024)
    c.send_request_head(ev.RequestHead(1, b"GET", b"http", b"w", b"/", [], True))
    assert kinds(c.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300)) == ["ProtocolError"]


# -- HTTP/2 ---------------------------------------------------------------------------------
class H2Pair:
    """A client and a server codec wired back to back (the wire is a method call)."""

    def __init__(self) -> None:
        self.client = H2Codec(client_side=True)
        self.server = H2Codec(client_side=False)
        self.pump()

    def pump(self) -> tuple[list[ev.Event], list[ev.Event]]:
        """Move bytes both ways until quiet; (events at the server, events at the client)."""
        at_server: list[ev.Event] = []
        at_client: list[ev.Event] = []
        while True:
            a, b = self.client.data_to_send(), self.server.data_to_send()
            if not a and not b:
                return at_server, at_client
            if a:
                at_server += self.server.feed(a)
            if b:
                at_client += self.client.feed(b)


def content(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if not isinstance(e, ev.WindowOpen)]


def test_h2_request_and_response_round_trip() -> None:
    p = H2Pair()
    sid = p.client.send_request_head(ev.RequestHead(
        0, b"POST", b"http", b"svc:80", b"/pkg.Svc/Call",
        [(b"content-type", b"application/grpc"), (b"te", b"trailers")]))
    p.client.send_data(sid, b"body")
    p.client.send_trailers(sid, [(b"x-t", b"1")])
    at_server, _ = p.pump()
    assert kinds(content(at_server)) == ["RequestHead", "Data", "Trailers"]  # no EndOfMessage
    head = at_server[0]
    assert isinstance(head, ev.RequestHead)
    assert (head.method, head.authority, head.path, head.end_stream) == (
        b"POST", b"svc:80", b"/pkg.Svc/Call", False)
    assert head.headers == [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    data = content(at_server)[1]
    assert isinstance(data, ev.Data) and data.flow == 4
    p.server.send_response_head(sid, 200, [(b"content-type", b"application/grpc"),
                                           (b"grpc-status", b"0")], end_stream=True)
    _, at_client = p.pump()
    assert kinds(content(at_client)) == ["ResponseHead"]  # trailers-only: one frame, no End
    assert at_client[-1].status == 200 and at_client[-1].end_stream  # type: ignore[attr-defined]


def test_h2_request_with_host_instead_of_authority_is_relayed_as_it_came() -> None:
    p = H2Pair()
    p.client.send_request_head(ev.RequestHead(0, b"GET", b"http", b"", b"/", [(b"host", b"w")], True))
    at_server, _ = p.pump()
    head = content(at_server)[0]
    assert isinstance(head, ev.RequestHead)
    assert (head.authority, head.headers) == (b"", [(b"host", b"w")])


def test_h2_flow_control_waits_for_ack() -> None:
    p = H2Pair()
    sid = p.client.send_request_head(ev.RequestHead(0, b"POST", b"http", b"s", b"/", []))
    window = p.client.send_window(sid)
    assert window == 65_535
    p.client.send_data(sid, b"x" * window)
    at_server, _ = p.pump()
    got = sum(e.flow for e in at_server if isinstance(e, ev.Data))
    assert got == window and p.client.send_window(sid) == 0
    _, at_client = p.pump()
    assert p.client.send_window(sid) == 0  # nothing handed on yet: no window back
    p.server.ack(sid, got)
    _, at_client = p.pump()
    assert any(isinstance(e, ev.WindowOpen) and e.stream_id == sid for e in at_client)
    assert p.client.send_window(sid) == window


def test_h2_graceful_goaway_lets_open_streams_finish() -> None:
    p = H2Pair()
    sid = p.client.send_request_head(ev.RequestHead(0, b"GET", b"http", b"s", b"/", [], True))
    p.pump()
    p.server.send_goaway()
    _, at_client = p.pump()
    goaway = [e for e in at_client if isinstance(e, ev.GoAway)]
    assert len(goaway) == 1 and (goaway[0].last_stream_id, goaway[0].code) == (sid, 0)
    p.server.send_response_head(sid, 200, [])
    p.server.send_data(sid, b"done", end_stream=True)
    _, at_client = p.pump()
    assert kinds(content(at_client)) == ["ResponseHead", "Data", "EndOfMessage"]


def test_h2_reset_and_protocol_error() -> None:
    p = H2Pair()
    sid = p.client.send_request_head(ev.RequestHead(0, b"GET", b"http", b"s", b"/", [], True))
    p.pump()
    p.client.send_reset(sid, 8)
    at_server, _ = p.pump()
    assert [(e.stream_id, e.code) for e in at_server if isinstance(e, ev.StreamReset)] == [(sid, 8)]
    server = H2Codec(client_side=False)
    out = server.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert kinds(out) == ["ProtocolError"]
    assert server.data_to_send()  # the GOAWAY(PROTOCOL_ERROR) to write before closing


# -- header policy: identical on both protocols ---------------------------------------------
FORGED = [(b"x-forwarded-client-cert", b"By=x;URI=spiffe://evil/ns/x/sa/admin")]


def test_policy_inbound_replaces_a_forged_xfcc_with_the_verified_peer() -> None:
    xfcc = xfcc_value(ME, PEER)
    assert xfcc == f"By={ME};URI={PEER}".encode()
    out = request_headers([(b"host", b"w"), *FORGED], inbound=True, xfcc=xfcc)
    assert [v for n, v in out if n == XFCC] == [xfcc]
    # Plaintext inbound (no verified peer): no identity at all, and no forged one.
    assert XFCC not in dict(request_headers(FORGED, inbound=True, xfcc=None))
    # Outbound: the app's header is not the mesh's business; the peer proxy strips it.
    assert dict(request_headers(FORGED, inbound=False, xfcc=None))[XFCC] == FORGED[0][1]


def test_policy_request_id_and_hop_by_hop() -> None:
    out = dict(request_headers([(b"Connection", b"close, x-secret"), (b"x-secret", b"1"),
                                (b"keep-alive", b"5"), (b"te", b"trailers"), (b"a", b"b")],
                               inbound=False, xfcc=None))
    assert set(out) == {b"te", b"a", b"x-request-id"} and len(out[b"x-request-id"]) == 36
    kept = request_headers([(b"X-Request-Id", b"abc")], inbound=False, xfcc=None)
    assert kept == [(b"X-Request-Id", b"abc")]
    assert response_headers([(b"connection", b"x-a"), (b"x-a", b"1"), (b"transfer-encoding", b"chunked"),
                             (b"b", b"2")]) == [(b"b", b"2")]


def _h1_forwarded(raw: bytes) -> bytes:
    """What an inbound proxy sends the app for one HTTP/1.1 request (codec → policy → codec)."""
    head = H1ServerCodec().feed(raw)[0]
    assert isinstance(head, ev.RequestHead)
    head.headers = request_headers(head.headers, inbound=True, xfcc=xfcc_value(ME, PEER))
    up = H1ClientCodec()
    up.send_request_head(head)
    return up.data_to_send()


def _h2_forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The same over HTTP/2: client codec → server codec → policy → client codec → app."""
    down, app = H2Pair(), H2Pair()
    down.client.send_request_head(ev.RequestHead(0, b"POST", b"http", b"s", b"/", headers, True))
    at_server, _ = down.pump()
    head = at_server[-1]
    assert isinstance(head, ev.RequestHead)
    head.headers = request_headers(head.headers, inbound=True, xfcc=xfcc_value(ME, PEER))
    app.client.send_request_head(head)
    at_app, _ = app.pump()
    seen = at_app[-1]
    assert isinstance(seen, ev.RequestHead)
    return seen.headers


def test_xfcc_rule_is_the_same_on_http1_http2_and_grpc() -> None:
    want = b"By=%s;URI=%s" % (ME.encode(), PEER.encode())
    h1 = _h1_forwarded(b"GET / HTTP/1.1\r\nHost: w\r\nX-Forwarded-Client-Cert: By=x;URI=evil\r\n\r\n")
    assert h1.lower().count(b"x-forwarded-client-cert") == 1
    assert b"x-forwarded-client-cert: " + want + b"\r\n" in h1 and b"evil" not in h1
    for extra in ([], [(b"content-type", b"application/grpc"), (b"te", b"trailers")]):
        h2 = _h2_forwarded([*FORGED, *extra])
        assert [v for n, v in h2 if n == XFCC] == [want]
        assert any(n == b"x-request-id" for n, _ in h2)


def test_local_replies_are_the_same_on_every_protocol() -> None:
    headers, body = replies.plain_headers(503, replies.NO_HEALTHY_UPSTREAM)
    assert body == b"no healthy upstream" and (b"content-length", b"19") in headers
    grpc = dict(replies.grpc_headers(504, replies.UPSTREAM_TIMEOUT))
    assert grpc[b"grpc-status"] == b"4" and grpc[b"grpc-message"] == b"upstream request timeout"
    assert dict(replies.grpc_headers(503, "x"))[b"grpc-status"] == b"14"
    assert dict(replies.grpc_headers(403, "x"))[b"grpc-status"] == b"7"
