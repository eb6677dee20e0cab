"""Python cost per relayed HTTP/2 exchange in both proxies' relays, in memory (no root, no
sockets): what the relay's own code costs, without the kernel's or TLS's share.

    .venv/bin/python perf/h2_relay_micro.py [N] [--calls]

A client codec (h2load's part: 4 connections, 10 streams each, GET 1 KB) talks to an outbound
``H2Downstream`` (a real ``Router``, ``Stats`` and ``Labeler``), whose pooled ``H2Upstream``
talks to an inbound ``H2Downstream`` (authorization hook, XFCC), whose pooled upstream talks
to an app codec answering 200 with 1 KB. Transports are in-memory: a write is delivered to
the peer on the next loop turn, so reads batch as on a loaded proxy. Prints CPU µs per exchange
for the whole chain (both relays plus the two end codecs, ~7 µs of it) and, with
``--calls``, Python calls per exchange (cProfile) and the top functions by own time.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

from control_plane.api.model import Endpoint, ProxyConfig
from sidecar.http import ngcodec
from sidecar.http.events import Data, EndOfMessage, RequestHead, ResponseHead
from sidecar.http2 import H2Context, H2Downstream, H2Pool
from sidecar.inbound import authorizer_for
from sidecar.labels import Labeler
from sidecar.routing import Router
from sidecar.stats import Stats

BODY = b"x" * 1024
CLIENTS, STREAMS = 4, 10


class MemTransport:
    """One end of an in-memory connection: writes reach the peer on the next loop turn."""

    def __init__(self, peer_addr: tuple[str, int]) -> None:
        self.peer: Any = None
        self.addr = peer_addr
        self.closing = False

    def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.peer.data_received, data)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.addr if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def link(a: Any, b: Any) -> None:
    """Connect protocol-like objects ``a`` (client end) and ``b`` (server end)."""
    ta, tb = MemTransport(("198.18.0.2", 40000)), MemTransport(("198.18.0.3", 80))
    ta.peer, tb.peer = b, a
    b.connection_made(tb)
    a.connection_made(ta)


class App:
    """The app: answers every request 200 with 1 KB."""

    def __init__(self) -> None:
        self.codec = ngcodec.NgH2Codec(False)
        self.t: Any = None

    def connection_made(self, t: Any) -> None:
        self.t = t
        t.write(self.codec.data_to_send())

    def data_received(self, data: bytes) -> None:
        c = self.codec
        for ev in c.feed(data):
            if type(ev) is RequestHead:
                c.send_response_head(ev.stream_id, 200, [(b"content-type", b"text/plain"),
                                                         (b"content-length", b"1024")])
                c.send_data(ev.stream_id, BODY, end_stream=True)
        out = c.data_to_send()
        if out:
            self.t.write(out)


class Client:
    """h2load's part: keeps STREAMS requests in flight until ``left`` were started."""

    def __init__(self, left: list[int], done: asyncio.Future) -> None:
        self.codec = ngcodec.NgH2Codec(True)
        self.left, self.done, self.t = left, done, None
        self.inflight = 0
        self.head = RequestHead(0, b"GET", b"http", b"web:80", b"/1k",
                                [(b"user-agent", b"h2load nghttp2/1.52.0")], True)
        self.finished = 0

    def connection_made(self, t: Any) -> None:
        self.t = t
        self._fill()

    def _fill(self) -> None:
        while self.inflight < STREAMS and self.left[0] > 0:
            self.left[0] -= 1
            self.inflight += 1
            self.codec.send_request_head(self.head)
        self.t.write(self.codec.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.codec.feed(data):
            if type(ev) is Data:
                self.codec.ack(ev.stream_id, ev.flow)
            elif type(ev) is EndOfMessage or (type(ev) is ResponseHead and ev.end_stream):
                self.inflight -= 1
                self.finished += 1
        if self.left[0] <= 0 and self.inflight == 0:
            self.done[0] -= 1
            if self.done[0] == 0:
                self.done[1].set_result(None)
            return
        self._fill()


class Connector:
    def __init__(self, far: Any) -> None:
        self.far = far

    async def connect(self, endpoint: Endpoint, alpn: str, factory: Any, timeout: float = 5.0):
        proto = factory()
        link(proto, self.far())
        return proto.transport, proto, endpoint.identity


def contexts() -> H2Context:
    """The outbound context; its pool connects to inbound relays that connect to the app."""
    stats, labels = Stats(), Labeler()
    cfg = ProxyConfig.from_dict({
        "clusters": [{"name": "web|80", "service": "web", "port": 80, "protocol": "http2",
                      "endpoints": [{"address": "198.18.0.3", "port": 80,
                                     "identity": "spiffe://cluster.local/ns/b/sa/web"}]}],
        "outbound": [{"service": "web", "addresses": ["198.18.0.1"], "port": 80,
                      "protocol": "http2", "default_cluster": "web|80"}]})
    labels.update(cfg, "spiffe://cluster.local/ns/a/sa/client")
    router = Router(cfg)
    from sidecar import authz

    gate = authz.Gate(lambda: (), stats, "198.18.0.2", "spiffe://cluster.local/ns/a/sa/client",
                      ("198.18.0.3", 80))
    in_pool = H2Pool(Connector(App))  # type: ignore[arg-type]
    in_ctx = H2Context(router=None, outbound_port=None, inbound_target=("127.0.0.1", 80),
                       connector=in_pool.connector, peer_identity="spiffe://cluster.local/ns/a/sa/client",
                       stats=stats, draining=lambda: False, pool=in_pool,
                       local_identity="spiffe://cluster.local/ns/b/sa/web",
                       authorizer=authorizer_for(gate), labels=labels)
    out_pool = H2Pool(Connector(lambda: H2Downstream(in_ctx)))  # type: ignore[arg-type]
    return H2Context(router=router, outbound_port=router.lookup("198.18.0.1", 80),
                     inbound_target=None, connector=out_pool.connector, peer_identity=None,
                     stats=stats, draining=lambda: False, pool=out_pool,
                     current_router=lambda: router, original_dst=("198.18.0.1", 80),
                     labels=labels)


async def run(ctx: H2Context, n: int) -> None:
    left = [n]
    done: list[Any] = [CLIENTS, asyncio.get_running_loop().create_future()]
    for _ in range(CLIENTS):
        link(Client(left, done), H2Downstream(ctx))  # type: ignore[arg-type]
    await done[1]


async def main(n: int, calls: bool, once: bool = False) -> None:
    ctx = contexts()
    await run(ctx, 400)  # warm: pools connected, caches filled
    best = float("inf")
    for _ in range(1 if once else 3):  # CPU time of this process, best of three: other load adds to wall time
        t = time.process_time()
        await run(ctx, n)
        best = min(best, (time.process_time() - t) / n * 1e6)
    print(f"{best:.1f} us CPU per exchange (both relays and the end codecs)")
    if calls:
        prof = cProfile.Profile()
        prof.enable()
        await run(ctx, n)
        prof.disable()
        st = pstats.Stats(prof)
        total = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
        side = sum(v[1] for k, v in st.stats.items() if "/sidecar/" in k[0])  # type: ignore[attr-defined]
        print(f"{total / n:.1f} Python calls per exchange, {side / n:.1f} in sidecar/")
        st.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    import uvloop

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    uvloop.run(main(int(args[0]) if args else 20_000, "--calls" in sys.argv, "--once" in sys.argv))
