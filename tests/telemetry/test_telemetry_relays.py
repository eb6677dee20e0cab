"""Telemetry of the HTTP/2 relays with real grpcio peers on loopback (no root), on both
codecs: client → outbound relay → inbound relay → gRPC app, as in tests/sidecar/test_http2.py
but with metrics labels, a tracer and a JSON access log on. Shows what the mesh tests cannot
provoke cheaply: grpc_response_status from trailers and trailers-only heads, and the
response flags UT (route timeout), UF,URX (connect failure, retried by Istio's default policy until exhausted) and DC (the caller went away)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from telemetry_kit import SpanSink

from control_plane.api.model import Cluster, Endpoint
from sidecar.accesslog import AccessLog
from sidecar.http import h2select, ngcodec
from sidecar.http2 import H2Context, H2Downstream, H2Pool
from sidecar.labels import Labeler
from sidecar.routing import RouteDecision
from sidecar.stats import Stats
from sidecar.tracing import Tracer
from sidecar.traffic import lb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sidecar"))
from test_http2 import (  # noqa: E402
    CLIENT_ID,
    SERVER_ID,
    AppState,
    StubConnector,
    method,
    start_app,
)

SERVICE_HOST = "echo.b.svc.cluster.local"
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"



class Router:
    """One route to one endpoint; what the exchange's policies read (sidecar/http/policy.py):
    no outlier detection, no pool limits, a round robin over the one endpoint."""

    def __init__(self, endpoint: Endpoint, timeout: float | None) -> None:
        cluster = Cluster(f"{SERVICE_HOST}|80", SERVICE_HOST, 80, "grpc", (endpoint,))
        self.decision = RouteDecision(cluster, endpoint, timeout, "default")
        self.policy_balancers = {cluster.name: lb.Balancer((endpoint,))}
        self.outliers: dict = {}
        self.pools: dict = {}
        self.clock = time.monotonic

    def resolve(self, outbound_port, method, path, headers) -> RouteDecision:
        return self.decision

    def decide(self, outbound_port, req) -> RouteDecision:
        return self.decision

    def rechoose(self, name, previous, avoid=None):
        return None

    def lookup(self, address, port) -> None:
        return None


@dataclass
class Relays:
    port: int
    stats: Stats
    sink: SpanSink
    log: AccessLog
    log_fd: int

    async def call(self, fn: Callable, *args):
        return await asyncio.to_thread(fn, *args)

    def series(self) -> list[dict[str, str]]:
        """The labels and value of every istio_requests_total sample."""
        fams = {f.name: f for f in text_string_to_metric_families(self.stats.render_prometheus())}
        return [{**s.labels, "value": s.value} for s in fams["istio_requests"].samples]

    def lines(self) -> list[dict]:
        self.log.flush()
        return [json.loads(x) for x in os.read(self.log_fd, 1 << 20).decode().splitlines()]


@pytest.fixture(params=["nghttp2", "h2"])
def codec(request) -> str:
    if request.param == "nghttp2" and not ngcodec.available():
        pytest.skip("the native codec is not built")
    before = h2select.chosen()
    h2select.select(request.param)
    yield request.param
    h2select.select(before)


@contextlib.asynccontextmanager
async def relays(timeout: float | None = None, dead_upstream: bool = False) -> AsyncIterator[Relays]:
    loop = asyncio.get_running_loop()
    server, app_port = start_app("127.0.0.1:0", AppState())
    stats, sink, labels = Stats(), SpanSink(), Labeler()
    tracer = Tracer(100.0, sink)
    r, w = os.pipe()
    log = AccessLog("json", w)
    downs: list[H2Downstream] = []

    def factory(ctx: H2Context) -> Callable[[], H2Downstream]:
        def make() -> H2Downstream:
            downs.append(H2Downstream(ctx))
            return downs[-1]
        return make

    in_pool, out_pool = H2Pool(StubConnector()), H2Pool(StubConnector())
    in_ctx = H2Context(router=None, outbound_port=None, inbound_target=("127.0.0.1", app_port),
                       connector=in_pool.connector, peer_identity=CLIENT_ID, pool=in_pool,
                       local_identity=SERVER_ID, stats=stats, draining=lambda: False,
                       labels=labels, tracer=tracer, access_log=log)
    inbound = await loop.create_server(factory(in_ctx), "127.0.0.1", 0)
    in_port = 1 if dead_upstream else inbound.sockets[0].getsockname()[1]
    router = Router(Endpoint("127.0.0.1", in_port, SERVER_ID), timeout)
    out_ctx = H2Context(router=router, outbound_port=None, inbound_target=None,  # type: ignore[arg-type]
                        connector=out_pool.connector, peer_identity=None, pool=out_pool,
                        original_dst=("198.18.0.10", 80), stats=stats, draining=lambda: False,
                        labels=labels, tracer=tracer, access_log=log)
    outbound = await loop.create_server(factory(out_ctx), "127.0.0.1", 0)
    try:
        yield Relays(outbound.sockets[0].getsockname()[1], stats, sink, log, r)
    finally:
        for srv in (outbound, inbound):
            srv.close()
        for d in downs:
            d.close()
        out_pool.close()
        in_pool.close()
        await asyncio.to_thread(server.stop, None)
        os.close(r)
        os.close(w)


def calls(target: str) -> list[str]:
    """A traced unary call, then one the app fails (NOT_FOUND): their status codes."""
    out = []
    with grpc.insecure_channel(target) as ch:
        meta = (("traceparent", f"00-{TRACE}-{PARENT}-01"),)
        _, call = method(ch, "Unary").with_call(b"hello", metadata=meta, timeout=10)
        out.append(call.code().name)
        try:
            method(ch, "Fail")(b"x", timeout=10)
        except grpc.RpcError as e:
            out.append(e.code().name)
    return out


def one_call(target: str, name: str, arg: bytes, timeout: float = 10) -> str:
    with grpc.insecure_channel(target) as ch:
        try:
            method(ch, name)(arg, timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return "OK"


async def settle(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.02)


def pick(series: list[dict], reporter: str, code: str, grpc_status: str = "") -> dict:
    (s,) = [s for s in series if s["reporter"] == reporter and s["response_code"] == code
            and (not grpc_status or s["grpc_response_status"] == grpc_status)]
    return s


async def test_grpc_status_bytes_spans_and_log_lines_on_both_reporters(codec: str) -> None:
    async with relays() as r:
        assert await r.call(calls, f"127.0.0.1:{r.port}") == ["OK", "NOT_FOUND"]
        await settle(lambda: len(r.sink.spans) >= 4)
        series = r.series()
        for reporter in ("source", "destination"):
            ok = pick(series, reporter, "200", "0")
            assert ok["request_protocol"] == "grpc" and ok["response_flags"] == "-"
            got = {(s["grpc_response_status"], s["value"]) for s in series
                   if s["reporter"] == reporter}
            assert got == {("0", 1.0), ("5", 1.0)}, (reporter, series)
        assert pick(series, "destination", "200", "0")["connection_security_policy"] == "mutual_tls"
        fams = {f.name: f for f in text_string_to_metric_families(r.stats.render_prometheus())}
        sums = {(s.labels["reporter"], s.labels["grpc_response_status"]): s.value
                for s in fams["istio_request_bytes"].samples if s.name.endswith("_sum")}
        # "hello" and "x" framed by gRPC (a 5-byte prefix each): body bytes on each reporter.
        assert sums == {("source", "0"): 10, ("source", "5"): 6,
                        ("destination", "0"): 10, ("destination", "5"): 6}
        traced = [s for s in r.sink.spans if f"{s.trace_id:032x}" == TRACE]
        (client,) = [s for s in traced if s.kind == "client"]
        (server,) = [s for s in traced if s.kind == "server"]
        assert client.parent_id == int(PARENT, 16) and server.parent_id == client.span_id
        assert client.attributes["upstream_cluster"] == f"outbound|80||{SERVICE_HOST}"
        assert client.attributes["peer.principal"] == SERVER_ID
        assert server.attributes["peer.principal"] == CLIENT_ID
        lines = r.lines()
        assert sorted((x["upstream_cluster"].split("|")[0], x["response_code"], x["protocol"])
                      for x in lines) == [("inbound", 200, "HTTP/2"), ("inbound", 200, "HTTP/2"),
                                          ("outbound", 200, "HTTP/2"), ("outbound", 200, "HTTP/2")]
        assert {x["trace_id"] for x in lines if x["path"].endswith("/Unary")} == {TRACE}


async def test_route_timeout_is_ut_and_the_abandoned_upstream_stream_dc(codec: str) -> None:
    async with relays(timeout=0.3) as r:
        assert await r.call(one_call, f"127.0.0.1:{r.port}", "Slow", b"3") == "DEADLINE_EXCEEDED"
        await settle(lambda: len(r.series()) >= 2)
        series = r.series()
        src = pick(series, "source", "504")
        assert (src["response_flags"], src["grpc_response_status"]) == ("UT", "4")
        # The outbound relay reset its upstream stream: the inbound side counts a DC.
        dst = pick(series, "destination", "0")
        assert dst["response_flags"] == "DC"


async def test_connect_failure_is_uf_with_grpc_unavailable(codec: str) -> None:
    async with relays(dead_upstream=True) as r:
        assert await r.call(one_call, f"127.0.0.1:{r.port}", "Unary", b"x") == "UNAVAILABLE"
        (s,) = r.series()
        assert (s["reporter"], s["response_code"], s["response_flags"],
                s["grpc_response_status"]) == ("source", "503", "UF,URX", "14")
        (line,) = r.lines()
        assert (line["response_flags"], line["upstream_host"]) == ("UF,URX", "127.0.0.1:1")
