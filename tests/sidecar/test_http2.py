"""The HTTP/2 relay on loopback with real grpcio peers: client → outbound relay → inbound relay → server.

The two relays are wired as in the mesh (outbound resolves through a router and reaches the
inbound relay with ALPN remora-h2; inbound forwards to the app with plaintext h2), with a stub
Router/Connector (plaintext TCP) in place of the proxy core. The mTLS hop through real pods is
tests/sidecar/test_http2_mesh.py.

Run as a script this module is also the gRPC app and client of the mesh test:
``python test_http2.py serve PORT``, ``... call HOST:PORT`` (prints JSON) and
``... stream HOST:PORT COUNT,SIZE,INTERVAL`` (a line per message, then the status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

SERVICE = "remora.test.Echo"
CLIENT_ID = "spiffe://cluster.local/ns/a/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/b/sa/server"
FORGED_XFCC = (("x-forwarded-client-cert", "By=spiffe://x;URI=spiffe://cluster.local/ns/kube-system/sa/admin"),)


# -- the gRPC app (bytes in, bytes out: no generated code) --------------------------------------
@dataclass
class AppState:
    cancelled: threading.Event = field(default_factory=threading.Event)
    yielded: int = 0  # messages a streaming handler has produced so far


def app_handler(state: AppState) -> grpc.GenericRpcHandler:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        md = dict(ctx.invocation_metadata())
        xfcc = [v for k, v in ctx.invocation_metadata() if k == "x-forwarded-client-cert"]
        ctx.send_initial_metadata((("x-seen-request-id", md.get("x-request-id", "")),
                                   ("x-seen-xfcc", " | ".join(xfcc))))
        ctx.set_trailing_metadata((("x-trailer", "yes"),))
        return req

    def stream(req: bytes, ctx: grpc.ServicerContext):
        """``count,size[,interval]``: count messages of size bytes each."""
        count, size, *rest = req.decode().split(",")
        interval = float(rest[0]) if rest else 0.0
        for i in range(int(count)):
            state.yielded = i + 1
            yield bytes([i % 251]) * int(size)
            if interval:
                time.sleep(interval)
        ctx.set_trailing_metadata((("x-sent", count),))

    def fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.set_trailing_metadata((("x-why", "teapot"),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

    def forever(req: bytes, ctx: grpc.ServicerContext):
        ctx.add_callback(state.cancelled.set)  # runs when the RPC ends, also on RST_STREAM
        while ctx.is_active():
            yield b"x" * 1024
            time.sleep(0.01)

    def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.add_callback(state.cancelled.set)
        deadline = time.monotonic() + float(req)
        while ctx.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        return b"late"

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Forever": grpc.unary_stream_rpc_method_handler(forever),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })


def start_app(address: str, state: AppState, options: list | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options or [])
    server.add_generic_rpc_handlers((app_handler(state),))
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def method(channel: grpc.Channel, name: str, streaming: bool = False):
    factory = channel.unary_stream if streaming else channel.unary_unary
    return factory(f"/{SERVICE}/{name}")


def must_show_calls(target: str) -> dict:
    """Unary, server-streaming, large and error calls; the results as plain JSON data."""
    out: dict = {}
    with grpc.insecure_channel(target) as ch:
        body, call = method(ch, "Unary").with_call(b"hello", timeout=10)
        out["unary"] = {"body": body.decode(), "initial": dict(call.initial_metadata()),
                        "trailing": dict(call.trailing_metadata()), "code": call.code().name}
        big = bytes(range(256)) * 4096  # 1 MiB each way: many times the 64 KiB window
        out["large_ok"] = method(ch, "Unary")(big, timeout=20) == big
        msgs = list(method(ch, "Stream", True)(b"40,100000", timeout=20))
        out["stream"] = {"count": len(msgs),
                         "ok": all(m == bytes([i % 251]) * 100000 for i, m in enumerate(msgs))}
        try:
            method(ch, "Fail")(b"x", timeout=10)
            out["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["fail"] = {"code": e.code().name, "details": e.details(),
                           "trailing": dict(e.trailing_metadata() or ())}
    return out


def serve_h2_echo(port: int) -> None:
    """Plain HTTP/2 with prior knowledge (not gRPC): every response is the request's headers
    as a JSON list of [name, value] pairs."""
    import h2.config
    import h2.connection
    import h2.events

    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        body = json.dumps([list(h) for h in ev.headers]).encode()
                        conn.send_headers(ev.stream_id, [
                            (":status", "200"), ("content-type", "application/json"),
                            ("content-length", str(len(body)))])
                        conn.send_data(ev.stream_id, body, end_stream=True)
                sock.sendall(conn.data_to_send())

    srv = socket.create_server(("0.0.0.0", port))
    print(port, flush=True)
    while True:
        client, _ = srv.accept()
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def main(argv: list[str]) -> int:
    if argv[0] == "h2echo":
        serve_h2_echo(int(argv[1]))
        return 0
    if argv[0] == "serve":
        server, port = start_app(f"0.0.0.0:{argv[1]}", AppState())
        print(port, flush=True)
        server.wait_for_termination()
        return 0
    if argv[0] == "call":
        print(json.dumps(must_show_calls(argv[1])), flush=True)
        return 0
    if argv[0] == "xfcc":  # a Unary call carrying a forged identity header: what the app saw
        with grpc.insecure_channel(argv[1]) as ch:
            _, c = method(ch, "Unary").with_call(b"x", timeout=10, metadata=FORGED_XFCC)
            print(json.dumps(dict(c.initial_metadata())), flush=True)
        return 0
    if argv[0] == "stream":  # a line per message as it arrives, then the final status
        with grpc.insecure_channel(argv[1]) as ch:
            code = "OK"
            try:
                for i, _ in enumerate(method(ch, "Stream", True)(argv[2].encode(), timeout=30)):
                    print(f"message {i + 1}", flush=True)
            except grpc.RpcError as e:
                code = e.code().name
            print(json.dumps({"code": code}), flush=True)
        return 0
    print(f"usage: {Path(__file__).name} serve PORT | h2echo PORT | call HOST:PORT | "
          "xfcc HOST:PORT | stream HOST:PORT SPEC",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# -- the tests ---------------------------------------------------------------------------------
import pytest  # noqa: E402
from codec_select import selected  # noqa: E402

from control_plane.api.model import Cluster, Endpoint  # noqa: E402
from sidecar import http2  # noqa: E402
from sidecar.http import h2codec, h2select  # noqa: E402
from sidecar.http2 import H2Context, H2Downstream, H2Pool  # noqa: E402
from sidecar.routing import RouteDecision  # noqa: E402
from sidecar.traffic import lb  # noqa: E402


@pytest.fixture(autouse=True, params=h2select.CODECS)
def codec(request) -> Iterator[str]:
    """Every test here runs once per HTTP/2 codec (ids ``[nghttp2]``, ``[h2]``): the relays
    make their codecs through h2select, chosen per process, so select it and restore it."""
    with selected(request.param) as name:
        yield name


class StubStats:
    def __init__(self) -> None:
        self.done: list[tuple] = []

    def request_done(self, direction, service, code, duration_s, peer_identity) -> None:
        self.done.append((direction, service, code, peer_identity))

    def protocol_error(self) -> None:
        self.done.append(("protocol_error",))


class StubRouter:
    def __init__(self, endpoint: Endpoint) -> None:
        cluster = Cluster(name="echo.b.svc.cluster.local|80", service="echo.b.svc.cluster.local",
                          port=80, protocol="grpc", endpoints=(endpoint,))
        self.decision = RouteDecision(cluster=cluster, endpoint=endpoint, timeout=None,
                                      route="default", status=0, message="")
        # What the exchange's policies read (sidecar/http/policy.py): no outlier detection,
        # no pool limits, a round robin over the one endpoint.
        self.policy_balancers = {cluster.name: lb.Balancer((endpoint,))}
        self.outliers: dict = {}
        self.pools: dict = {}
        self.clock = time.monotonic

    def decide(self, outbound_port, req):
        return self.decision

    def rechoose(self, name, previous, avoid=None):
        return None

    def lookup(self, address, port):
        return None


class StubConnector:
    """Plaintext TCP in place of the core's mTLS connector; counts connections per ALPN."""

    def __init__(self) -> None:
        self.connects: dict[str, int] = {}

    async def connect(self, endpoint, alpn, protocol_factory, timeout=5.0):
        self.connects[alpn] = self.connects.get(alpn, 0) + 1
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(protocol_factory, endpoint.address,
                                                        endpoint.port)
        return transport, proto, endpoint.identity


@dataclass
class Relay:
    app: AppState
    app_port: int
    port: int  # the outbound relay: where the gRPC client connects
    router: StubRouter
    stats: StubStats
    out_connector: StubConnector
    in_connector: StubConnector
    draining: list[bool]
    downstreams: list[H2Downstream]
    routers: list[StubRouter]
    in_ctx: H2Context
    registry: set
    closes: list[int]

    async def run(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")


@contextlib.asynccontextmanager
async def running_relay(app_options: list | None = None):
    """App, inbound relay and outbound relay on loopback; all stopped afterwards."""
    loop = asyncio.get_running_loop()
    state = AppState()
    server, app_port = start_app("127.0.0.1:0", state, app_options)
    stats, out_conn, in_conn = StubStats(), StubConnector(), StubConnector()
    draining = [False]
    downstreams: list[H2Downstream] = []

    def factory(ctx):
        def make():
            d = H2Downstream(ctx)
            downstreams.append(d)
            return d
        return make

    in_pool, out_pool = H2Pool(in_conn), H2Pool(out_conn)
    registry: set = set()  # open downstream connections, as the runtime keeps them
    closes: list[int] = []  # one entry per downstream close the relay counted
    in_ctx = H2Context(router=None, outbound_port=None, inbound_target=("127.0.0.1", app_port),
                       connector=in_conn, peer_identity=CLIENT_ID, stats=stats,
                       draining=lambda: False, pool=in_pool, registry=registry,
                       closed=lambda: closes.append(1), local_identity=SERVER_ID)
    inbound = await loop.create_server(factory(in_ctx), "127.0.0.1", 0)
    in_port = inbound.sockets[0].getsockname()[1]
    router = StubRouter(Endpoint(address="127.0.0.1", port=in_port, identity=SERVER_ID))
    routers = [router]  # the proxy's current router: a config push appends one
    out_ctx = H2Context(router=router, outbound_port=None, inbound_target=None,
                        connector=out_conn, peer_identity=None, stats=stats,
                        draining=lambda: draining[0], pool=out_pool, registry=registry,
                        closed=lambda: closes.append(1), current_router=lambda: routers[-1],
                        original_dst=("198.18.0.10", 80))
    outbound = await loop.create_server(factory(out_ctx), "127.0.0.1", 0)
    try:
        yield Relay(state, app_port, outbound.sockets[0].getsockname()[1], router, stats,
                    out_conn, in_conn, draining, downstreams, routers, in_ctx, registry,
                    closes)
    finally:
        for srv in (outbound, inbound):
            srv.close()
        for d in downstreams:
            d.close()
        out_pool.close()
        in_pool.close()
        await asyncio.to_thread(server.stop, None)


@pytest.fixture
async def relay():
    async with running_relay() as r:
        yield r


async def test_unary_large_streaming_and_error_through_both_relays(relay, codec):
    res = await relay.run(must_show_calls, f"127.0.0.1:{relay.port}")
    # Both relays' connections ran on the codec this test selected.
    assert relay.downstreams and {type(d.codec) for d in relay.downstreams} == {
        h2select.factory(codec)}
    assert res["unary"]["body"] == "hello"
    assert res["unary"]["trailing"]["x-trailer"] == "yes"  # trailers forwarded
    assert len(res["unary"]["initial"]["x-seen-request-id"]) == 36  # x-request-id added once
    assert res["large_ok"] is True
    assert res["stream"] == {"count": 40, "ok": True}
    assert res["fail"]["code"] == "NOT_FOUND"
    assert res["fail"]["details"] == "no such thing: x"
    assert res["fail"]["trailing"]["x-why"] == "teapot"
    # One upstream connection per hop, multiplexed: no connection per request.
    assert relay.out_connector.connects == {"remora-h2": 1}
    assert relay.in_connector.connects == {"h2": 1}
    codes = sorted((d, s, c, p) for d, s, c, p in relay.stats.done)
    assert ("outbound", "echo.b.svc.cluster.local", 200, SERVER_ID) in codes
    assert ("inbound", f"inbound|{relay.app_port}", 200, CLIENT_ID) in codes
    assert len(codes) == 8  # four calls, counted once on each relay


async def test_existing_request_id_is_kept(relay):
    def call():
        with relay.channel() as ch:
            _, c = method(ch, "Unary").with_call(b"x", metadata=(("x-request-id", "abc"),))
            return dict(c.initial_metadata())["x-seen-request-id"]
    assert await relay.run(call) == "abc"


async def test_forged_xfcc_never_reaches_the_app_over_http2(relay):
    """The inbound relay removes the client's copy and asserts the verified peer, as on
    HTTP/1.1; without a forged header the app still gets the proxy's one."""
    def call(metadata):
        with relay.channel() as ch:
            _, c = method(ch, "Unary").with_call(b"x", timeout=5, metadata=metadata)
            return dict(c.initial_metadata())["x-seen-xfcc"]
    want = f"By={SERVER_ID};URI={CLIENT_ID}"
    assert await relay.run(call, FORGED_XFCC) == want
    assert await relay.run(call, ()) == want


async def test_inbound_authorizer_denies_with_403_before_dispatch(relay):
    seen = []

    def authorizer(attrs):
        seen.append((attrs.method, attrs.path, attrs.principal))
        return (403, "RBAC: access denied") if attrs.path.endswith(b"/Fail") else None
    relay.in_ctx.authorizer = authorizer

    def calls():
        with relay.channel() as ch:
            ok = method(ch, "Unary")(b"x", timeout=5)
            with pytest.raises(grpc.RpcError) as err:
                method(ch, "Fail")(b"x", timeout=5)
            return ok, err.value.code(), err.value.details()
    assert await relay.run(calls) == (b"x", grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")
    assert seen == [(b"POST", f"/{SERVICE}/Unary".encode(), CLIENT_ID),
                    (b"POST", f"/{SERVICE}/Fail".encode(), CLIENT_ID)]
    assert ("inbound", f"inbound|{relay.app_port}", 403, CLIENT_ID) in relay.stats.done


async def test_config_push_applies_to_the_next_request_on_an_open_http2_connection(relay):
    def calls():
        with relay.channel() as ch:  # one connection for both calls
            first = method(ch, "Unary")(b"x", timeout=5)
            relay.routers.append(StubRouter(relay.router.decision.endpoint))
            relay.routers[-1].decision = RouteDecision(status=503, message="no healthy upstream")
            with pytest.raises(grpc.RpcError) as err:
                method(ch, "Unary")(b"x", timeout=5)
            return first, err.value.code()
    assert await relay.run(calls) == (b"x", grpc.StatusCode.UNAVAILABLE)
    outbound = [d for d in relay.downstreams if d.ctx.inbound_target is None]
    assert len(outbound) == 1  # the push reached the connection that was already open


async def test_each_downstream_close_is_counted_exactly_once(relay):
    def call():
        with relay.channel() as ch:
            return method(ch, "Unary")(b"x", timeout=5)
    assert await relay.run(call) == b"x"
    assert await relay.run(call) == b"x"  # a second client connection, same pooled upstream
    deadline = time.monotonic() + 15  # the client's close can lag on a loaded machine
    while sum(d.closed for d in relay.downstreams) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    closed = [d for d in relay.downstreams if d.closed]
    assert len(closed) == 2 and len(relay.closes) == 2  # the two app connections, once each
    assert all(d not in relay.registry for d in closed)


async def test_pooled_connections_are_not_shared_across_expected_identities(relay):
    def call():
        with relay.channel() as ch:
            return method(ch, "Unary")(b"x", timeout=5)
    assert await relay.run(call) == b"x"
    old = relay.router.decision.endpoint
    # The same pod IP and port, now expected to be another workload (an IP reused by k8s).
    relay.router.decision.endpoint = Endpoint(old.address, old.port,
                                              identity="spiffe://cluster.local/ns/b/sa/other")
    assert await relay.run(call) == b"x"
    assert relay.out_connector.connects == {"remora-h2": 2}


async def test_client_cancel_resets_the_server_stream(relay):
    def call():
        with relay.channel() as ch:
            it = method(ch, "Forever", True)(b"", timeout=10)
            next(it)
            it.cancel()  # RST_STREAM(CANCEL) from the client
    await relay.run(call)
    # The reset travelled through both relays: the app's handler saw its RPC end.
    assert await asyncio.to_thread(relay.app.cancelled.wait, 5)


async def test_no_endpoint_is_unavailable(relay):
    relay.router.decision = RouteDecision(status=503, message="no healthy upstream")

    def call():
        with relay.channel() as ch, pytest.raises(grpc.RpcError) as err:
            method(ch, "Unary")(b"x", timeout=5)
        return err.value.code(), err.value.details()
    assert await relay.run(call) == (grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    assert relay.stats.done[-1][2] == 503


async def test_connect_failure_is_unavailable(relay):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    relay.router.decision.endpoint = Endpoint("127.0.0.1", closed_port, identity=SERVER_ID)

    def call():
        with relay.channel() as ch, pytest.raises(grpc.RpcError) as err:
            method(ch, "Unary")(b"x", timeout=5)
        return err.value.code(), err.value.details()
    code, details = await relay.run(call)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details.startswith("upstream connect error")


async def test_route_timeout_is_504_and_cancels_upstream(relay):
    relay.router.decision.timeout = 0.3

    def call():
        with relay.channel() as ch, pytest.raises(grpc.RpcError) as err:
            method(ch, "Slow")(b"5", timeout=10)
        return err.value.code(), err.value.details()
    assert await relay.run(call) == (grpc.StatusCode.DEADLINE_EXCEEDED, "upstream request timeout")
    assert ("outbound", "echo.b.svc.cluster.local", 504, SERVER_ID) in relay.stats.done
    assert await asyncio.to_thread(relay.app.cancelled.wait, 5)  # upstream stream was reset


async def test_plain_http2_error_reply_has_a_body(relay):
    relay.router.decision = RouteDecision(status=503, message="no healthy upstream")
    client = await RawClient.open(relay.port)
    try:
        sid = client.request(b"/x", grpc=False)
        headers, body, _ = await client.read_stream(sid)
        assert dict(headers)[b":status"] == b"503"
        assert body == b"no healthy upstream"  # the same body as on HTTP/1.1, as Envoy's
    finally:
        client.close()


def grpc_frame(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


class RawClient:
    """An h2 client that acknowledges DATA only when told to: a reader as slow as we like."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.flush()
        self.backlog: list = []  # events not yet consumed by read_stream
        self.backlog_seen: list = []  # every event read_stream consumed

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def request(self, path: bytes, body: bytes = b"", grpc: bool = True, end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"echo"),
                   (b":path", path)]
        if grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        self.h2.send_headers(sid, headers)
        self.h2.send_data(sid, grpc_frame(body) if grpc else body, end_stream=end)
        self.flush()
        return sid

    async def pump(self, timeout: float = 0.2) -> list:
        """Read what arrives within ``timeout``; never acknowledges DATA by itself."""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            events = self.h2.receive_data(data)
            self.flush()
            self.backlog += events
            return events
        return []

    async def read_stream(self, sid: int, ack: bool = True, limit: float = 10):
        import h2.events
        headers, body, trailers = None, bytearray(), None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.backlog:
                await self.pump()
            events, self.backlog = self.backlog, []
            self.backlog_seen += events
            for ev in events:
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = ev.headers
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    if ack:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
                        self.flush()
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = ev.headers
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return headers, bytes(body), trailers
        raise AssertionError(f"stream {sid} did not end within {limit}s")

    def close(self) -> None:
        self.writer.close()


def relay_buffered(relay: Relay) -> int:
    """Bytes the relays hold right now: queued in pipes plus unsent in transports."""
    total = 0
    seen = set()
    for down in list(relay.registry):  # the open downstream connections
        for ex in down.streams.values():
            total += sum(len(item[0]) for item in ex.req.queue)
            total += sum(len(item[0]) for item in ex.resp.queue)
            if ex.up is not None and id(ex.up) not in seen:
                seen.add(id(ex.up))
                total += ex.up.transport.get_write_buffer_size()
        total += down.transport.get_write_buffer_size()
    return total


async def test_slow_reader_stalls_the_server_instead_of_growing_buffers(relay):
    count, size = 100, 100_000  # 10 MB the server would like to send
    client = await RawClient.open(relay.port)
    try:
        sid = client.request(b"/remora.test.Echo/Stream", f"{count},{size}".encode())
        for _ in range(10):  # a second of not acknowledging anything
            await client.pump(0.1)
        held = relay_buffered(relay)
        # Bounded by the windows (64 KiB per stream, 2 MiB per connection), not by the stream.
        assert held < 2 * h2codec.CONN_WINDOW, held
        assert relay.app.yielded < count  # the server is held back by flow control
        _, body, trailers = await client.read_stream(sid, ack=True, limit=30)
        assert len(body) == count * (size + 5)  # then everything arrives once we read
        assert dict(trailers)[b"grpc-status"] == b"0"
    finally:
        client.close()


async def test_client_that_stops_reading_its_socket_fills_no_more_than_the_high_water_mark(relay):
    import h2.settings
    count, size = 500, 100_000  # 50 MB: more than the kernel's socket buffers take
    client = await RawClient.open(relay.port)
    try:
        # A 2 GiB window: flow control alone would let the relay queue everything for it.
        client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.h2.increment_flow_control_window(2**31 - 1 - 65_535)
        client.request(b"/remora.test.Echo/Stream", f"{count},{size}".encode())
        await asyncio.sleep(1.5)  # and never read the socket
        held = relay_buffered(relay)
        assert held < 2 * h2codec.CONN_WINDOW + http2.HIGH_WATER, held
        assert relay.app.yielded < count
        assert any(d.write_paused for d in relay.downstreams)  # reading from it was paused
    finally:
        client.close()


class ResettingServer:
    """An h2 app that answers every request with RST_STREAM(ENHANCE_YOUR_CALM), or with
    ``early_response``: a whole response, then RST_STREAM(NO_ERROR) to stop the request body."""

    early_response = b""

    def __init__(self) -> None:
        import h2.config
        import h2.connection
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived) and self.early_response:
                self.h2.send_headers(ev.stream_id, [(b":status", b"200")])
                body = self.early_response
                for i in range(0, len(body), 16384):
                    self.h2.send_data(ev.stream_id, body[i:i + 16384])
                self.h2.end_stream(ev.stream_id)
                self.h2.reset_stream(ev.stream_id, 0)
            elif isinstance(ev, h2.events.RequestReceived):
                self.h2.reset_stream(ev.stream_id, 11)
        self.transport.write(self.h2.data_to_send())

    def connection_lost(self, exc) -> None:
        pass


async def test_upstream_reset_reaches_the_client_with_its_code(relay):
    server = await asyncio.get_running_loop().create_server(ResettingServer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        relay.router.decision.endpoint = Endpoint("127.0.0.1", port, identity=None)
        client = await RawClient.open(relay.port)
        try:
            sid = client.request(b"/remora.test.Echo/Unary", b"x")
            await client.read_stream(sid)
            resets = [ev for ev in client.backlog_seen if getattr(ev, "error_code", None)]
            assert [(ev.stream_id, int(ev.error_code)) for ev in resets] == [(sid, 11)]
        finally:
            client.close()
        assert relay.out_connector.connects == {"h2": 1}  # no identity: plaintext ALPN h2
    finally:
        server.close()


async def test_response_then_reset_still_reaches_a_slow_client(relay):
    import h2.settings

    class EarlyServer(ResettingServer):
        early_response = bytes(range(250)) * 200  # 50 kB: fits the relay's window, not the client's

    server = await asyncio.get_running_loop().create_server(EarlyServer, "127.0.0.1", 0)
    try:
        relay.router.decision.endpoint = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
        client = await RawClient.open(relay.port)
        try:
            client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
            sid = client.request(b"/upload", b"part of a body", grpc=False, end=False)
            await asyncio.sleep(0.3)  # the server's response and RST_STREAM reach the relay
            headers, body, _ = await client.read_stream(sid)
            assert dict(headers)[b":status"] == b"200"
            assert body == EarlyServer.early_response  # not cut off by the upstream reset
        finally:
            client.close()
    finally:
        server.close()


async def test_drain_sends_goaway_and_lets_inflight_streams_finish(relay):
    def call():
        with relay.channel() as ch:
            msgs = list(method(ch, "Stream", True)(b"10,10,0.1", timeout=10))
            return len(msgs)
    inflight = asyncio.ensure_future(relay.run(call))
    await asyncio.sleep(0.3)
    relay.draining[0] = True
    for d in list(relay.registry):  # what the runtime's drain does with its open connections
        d.close_if_idle()
    assert await inflight == 10  # started before the GOAWAY: completes
    outbound = [d for d in relay.downstreams if d.ctx.router is not None]
    assert outbound and all(d.goaway_sent for d in outbound)
    deadline = time.monotonic() + 3
    while not all(d.closed for d in outbound) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(d.closed for d in outbound)  # and the drained connection closes after it


async def test_upstream_goaway_moves_new_streams_to_a_new_connection():
    # The app sends GOAWAY after 300 ms on every connection (gRPC's max connection age).
    options = [("grpc.max_connection_age_ms", 300), ("grpc.max_connection_age_grace_ms", 10000)]
    async with running_relay(options) as r:
        def calls():
            with r.channel() as ch:
                stream = method(ch, "Stream", True)(b"8,1000,0.1", timeout=10)
                results = []
                for i in range(12):
                    results.append(method(ch, "Unary")(b"%d" % i, timeout=5))
                    time.sleep(0.1)
                return results, len(list(stream))
        results, streamed = await asyncio.to_thread(calls)
        assert results == [b"%d" % i for i in range(12)]  # nothing failed across GOAWAYs
        assert streamed == 8  # the stream in flight at the GOAWAY finished
        assert r.in_connector.connects["h2"] >= 2  # the pool opened a new connection
