"""Telemetry of the HTTP/1.1 relay on loopback (no root): an outbound relay with metrics
labels and a JSON access log on, in front of a small app that answers, stalls or cuts its
response. Shows the response flags the mesh tests do not provoke: NR, UT, UC and DC, and
that the request id the relay adds is the one the app sees and the log prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from control_plane.api.model import Cluster, Endpoint
from sidecar.accesslog import AccessLog
from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.labels import Labeler
from sidecar.routing import RouteDecision
from sidecar.stats import OUTBOUND, Stats
from sidecar.traffic import lb

HOST = "web.demo.svc.cluster.local"
ROUTE_TIMEOUT = 0.3


class Router:
    """Every path goes to the app, except /nr (no route: 404)."""

    def __init__(self, app_port: int) -> None:
        self.cluster = Cluster(f"{HOST}|80", HOST, 80, "http", (Endpoint("127.0.0.1", app_port),))
        self.routed = RouteDecision(self.cluster, self.cluster.endpoints[0], ROUTE_TIMEOUT)
        self.no_route = RouteDecision(self.cluster, None, status=404, message="route not found",
                                      flag="NR")
        # What the exchange's policies read (sidecar/http/policy.py): no outlier detection,
        # no pool limits, a round robin over the one endpoint.
        self.policy_balancers = {self.cluster.name: lb.Balancer(self.cluster.endpoints)}
        self.outliers: dict = {}
        self.pools: dict = {}
        self.clock = time.monotonic

    def resolve(self, port, method, path, headers) -> RouteDecision:
        return self.no_route if path == b"/nr" else self.routed

    def decide(self, port, req) -> RouteDecision:
        return self.no_route if req.path.startswith("/nr") else self.routed

    def rechoose(self, name, previous, avoid=None):
        return None

    def is_fixed(self, port) -> bool:
        return False


class Connector:
    async def connect(self, endpoint, alpn, protocol_factory, timeout=5.0):
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(protocol_factory, endpoint.address,
                                                        endpoint.port)
        return transport, proto, None


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/slow: never answers; /cut: a head promising 100 bytes, 3 of them, then close;
    else: echoes the x-request-id it got as the body."""
    with contextlib.suppress(ConnectionError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            rid = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"x-request-id:")), b"")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if path == b"/slow":
                await asyncio.sleep(2)
                return
            if path == b"/cut":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                await writer.drain()
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(rid), rid))
            await writer.drain()
    writer.close()


@dataclass
class Relay:
    port: int
    stats: Stats
    log: AccessLog
    log_fd: int

    async def request(self, raw: bytes, close_after: float | None = None) -> bytes:
        """Send ``raw``; read until the relay closes (or, with ``close_after``, hang up)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(raw)
        try:
            if close_after is not None:
                await asyncio.sleep(close_after)
                # A reset, not a FIN: a half-closed client still gets its answer.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return b""
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    def series(self) -> dict[tuple[str, str], float]:
        """(response_code, response_flags) -> istio_requests_total."""
        fams = {f.name: f for f in text_string_to_metric_families(self.stats.render_prometheus())}
        return {(s.labels["response_code"], s.labels["response_flags"]): s.value
                for s in fams["istio_requests"].samples}

    def lines(self) -> list[dict]:
        self.log.flush()
        return [json.loads(x) for x in os.read(self.log_fd, 1 << 20).decode().splitlines()]


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[Relay]:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(app, "127.0.0.1", 0)
    router = Router(server.sockets[0].getsockname()[1])
    stats = Stats()
    r, w = os.pipe()
    log = AccessLog("json", w)
    ctx = H1Context(OUTBOUND, Connector(), H1Pool(stats), stats, lambda: False,  # type: ignore[arg-type]
                    router=router, service=HOST, original_dst=("198.19.0.9", 80),  # type: ignore[arg-type]
                    labels=Labeler(), access_log=log)
    listener = await loop.create_server(lambda: H1Downstream(ctx), "127.0.0.1", 0)
    try:
        yield Relay(listener.sockets[0].getsockname()[1], stats, log, r)
    finally:
        listener.close()
        server.close()
        ctx.pool.close_all()
        os.close(r)
        os.close(w)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n".encode()


async def settle(check) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.02)


async def test_flags_bytes_and_request_id_of_the_http1_relay() -> None:
    async with relay() as r:
        ok = await r.request(b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\n"
                             b"connection: close\r\n\r\nhello")
        assert ok.startswith(b"HTTP/1.1 200")
        rid = ok.split(b"\r\n\r\n", 1)[1]
        assert len(rid) == 36
        assert (await r.request(get("/nr"))).startswith(b"HTTP/1.1 404")
        assert (await r.request(get("/slow"))).startswith(b"HTTP/1.1 504")
        assert (await r.request(get("/cut"))).startswith(b"HTTP/1.1 200")  # then cut short
        await r.request(get("/slow"), close_after=0.1)  # the client gives up first
        await settle(lambda: len(r.series()) == 5)
        assert r.series() == {("200", "-"): 1, ("404", "NR"): 1, ("504", "UT"): 1,
                              ("200", "UC"): 1, ("0", "DC"): 1}
        lines = {(x["path"], x["response_flags"]): x for x in r.lines()}
        first = lines[("/", "-")]
        assert (first["method"], first["bytes_received"], first["bytes_sent"],
                first["request_id"], first["upstream_cluster"]) == (
            "POST", 5, 36, rid.decode(), f"outbound|80||{HOST}")
        assert lines[("/nr", "NR")]["upstream_host"] is None
        assert lines[("/cut", "UC")]["bytes_sent"] == 3
        assert lines[("/slow", "DC")]["response_code"] == 0
