"""VirtualService ``mirror`` in the mirror cluster's own protocol, through the real outbound
relays (tests/sidecar/traffic_harness.py: a real Router from Istio YAML, loopback sockets, no
root), on both HTTP/2 codecs (REMORA_H2_CODEC=nghttp2|h2, chosen per process by h2select):

- a gRPC route (grpcio client → relay → grpcio server) mirrored to a grpcio server: the copy
  is a gRPC call that server answers;
- an HTTP/2 route (curl --http2-prior-knowledge) and an HTTP/1.1 request to an ``http2`` port
  mirrored to an app that speaks only HTTP/2 and records what it got: the copy is HTTP/2 with
  the "-shadow" authority and the request's body;
- a mirror that never answers: the primary is not slowed or failed, copies above the
  in-flight cap are dropped, and every copy is counted (remora_mirror_requests_total).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import yaml
from codec_select import selected
from traffic_harness import H2_PREFACE, Harness

from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.resources import key_of
from sidecar.http import h2select, mirror

PRIMARY, COPY = "198.18.3.11", "198.18.3.12"
METHOD = "/remora.test.Echo/Say"

YAML = f"""
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec: {{clusterIP: 198.19.3.1, selector: {{app: echo}}, ports: [{{name: grpc, port: 50051}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: 198.19.3.2, selector: {{app: echo}}, ports: [{{name: http2, port: 8080}}]}}
---
apiVersion: v1
kind: List
items:
  - {{kind: Pod, metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}, annotations: {{remora.dev/status: "{{}}"}}}}, spec: {{serviceAccountName: echo}}, status: {{podIP: {PRIMARY}}}}}
  - {{kind: Pod, metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}, annotations: {{remora.dev/status: "{{}}"}}}}, spec: {{serviceAccountName: echo}}, status: {{podIP: {COPY}}}}}
  - {{kind: Pod, metadata: {{name: client, namespace: default, labels: {{app: client}}, annotations: {{remora.dev/status: "{{}}"}}}}, spec: {{serviceAccountName: echo}}, status: {{podIP: 198.18.3.20}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  http:
  - route: [{{destination: {{host: echo, subset: v1}}}}]
    mirror: {{host: echo, subset: v2}}
    mirrorPercentage: {{value: 100.0}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web, subset: v1}}}}]
    mirror: {{host: web, subset: v2}}
"""


def config() -> ProxyConfig:
    objs = []
    for d in yaml.safe_load_all(YAML):
        objs += [{"apiVersion": "v1", **i} for i in d["items"]] if d["kind"] == "List" else [d]
    reg = Registry.from_objects({key_of(o): o for o in objs}.values())
    assert reg.errors == []
    return SnapshotBuilder(reg, "cluster.local", "ROOTS\n").snapshot_for(ProxyKey("default", "client")).config


# -- the apps ---------------------------------------------------------------------------------

@dataclass
class Got:
    protocol: str
    method: str = ""
    path: str = ""
    authority: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class H2OnlyApp(asyncio.Protocol):
    """Speaks HTTP/2 prior knowledge only (an HTTP/1.1 request is recorded and refused);
    answers gRPC requests as gRPC, others 200; a path with "hang" is never answered."""

    got: list[Got] = []
    resets = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.conn: h2.connection.H2Connection | None = None
        self.streams: dict[int, Got] = {}

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self.buf += data
            if len(self.buf) < len(H2_PREFACE) and H2_PREFACE.startswith(self.buf):
                return
            if not self.buf.startswith(H2_PREFACE):
                H2OnlyApp.got.append(Got("http/1.1", body=self.buf))
                self.transport.close()
                return
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                             header_encoding="utf-8"))
            self.conn.initiate_connection()
            data, self.buf = self.buf, b""
        conn = self.conn
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                h = dict(ev.headers)
                self.streams[ev.stream_id] = Got("h2", h[":method"], h[":path"], h.get(":authority", ""),
                                                 {k: v for k, v in h.items() if not k.startswith(":")})
            elif isinstance(ev, h2.events.DataReceived):
                self.streams[ev.stream_id].body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                g = self.streams.pop(ev.stream_id)
                H2OnlyApp.got.append(g)
                if "hang" not in g.path:
                    self.answer(ev.stream_id, g)
            elif isinstance(ev, h2.events.StreamReset):
                H2OnlyApp.resets += 1
        self.transport.write(conn.data_to_send())

    def answer(self, sid: int, g: Got) -> None:
        assert self.conn is not None
        if g.headers.get("content-type", "").startswith("application/grpc"):
            self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            self.conn.send_data(sid, g.body)
            self.conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        else:
            self.conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
            self.conn.send_data(sid, b"ok", end_stream=True)


class GrpcApp:
    """A grpcio server for METHOD: echoes the request bytes, records what it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[bytes, dict[str, str]]] = []

        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append((request, dict(context.invocation_metadata())))
            return self.name.encode() + b":" + request

        handler = grpc.method_handlers_generic_handler("remora.test.Echo", {
            "Say": grpc.unary_unary_rpc_method_handler(say)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@dataclass
class Apps:
    mesh: Harness
    grpc_primary: GrpcApp
    grpc_copy: GrpcApp
    web_port: int  # the primary on the "web" service speaks both (the harness's App)


@pytest.fixture(scope="module")
def apps() -> Iterator[Apps]:
    mesh = Harness()
    gp, gc = GrpcApp("primary"), GrpcApp("copy")

    async def start_h2only() -> int:
        srv = await mesh.loop.create_server(H2OnlyApp, "127.0.0.1", 0)
        mesh.servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])
    h2only = mesh.run(start_h2only())
    web = mesh.app(PRIMARY)  # one App answers the "web" primary on h1 and h2c
    cfg = config()
    # Endpoints by (service, address): the harness maps an address to one app, so place them here.
    ports = {("echo", PRIMARY): gp.port, ("echo", COPY): gc.port, ("web", PRIMARY): web.port,
             ("web", COPY): h2only}
    clusters = []
    for c in cfg.clusters:
        svc = c.service.split(".")[0]
        eps = tuple(dataclasses.replace(e, address="127.0.0.1", port=ports[(svc, e.address)], identity=None)
                    for e in c.endpoints if (svc, e.address) in ports)
        clusters.append(dataclasses.replace(c, endpoints=eps))
    cfg = dataclasses.replace(cfg, clusters=tuple(clusters))
    mesh.config = cfg

    def swap() -> Any:
        from sidecar.routing import Router
        mesh.router = Router(cfg, mesh.router)
    mesh.call(swap)
    try:
        yield Apps(mesh, gp, gc, web.port)
    finally:
        gp.server.stop(0)
        gc.server.stop(0)
        mesh.close()


@pytest.fixture(params=h2select.CODECS)
def codec(request) -> Iterator[str]:
    with selected(request.param) as name:
        yield name


@pytest.fixture(autouse=True)
def fresh(apps: Apps) -> Iterator[None]:
    H2OnlyApp.got, H2OnlyApp.resets = [], 0
    apps.grpc_primary.calls.clear()
    apps.grpc_copy.calls.clear()
    yield
    # The copies of one test must not leak into the next; new connections per codec.
    apps.mesh.wait(lambda: mirror.in_flight() == 0, 8)
    apps.mesh.call(apps.mesh.h2_pool.close)
    apps.mesh.call(apps.mesh.h1_pool.close_all)


def grpc_call(apps: Apps, payload: bytes, timeout: float = 5.0) -> bytes:
    lp = apps.mesh.port(apps.mesh.vip("echo", 50051), 50051, "h2")
    with grpc.insecure_channel(f"127.0.0.1:{lp}", options=[("grpc.default_authority", "echo:50051")]) as ch:
        return bytes(ch.unary_unary(METHOD)(payload, timeout=timeout))


def test_grpc_route_mirrored_to_a_grpc_server(apps, codec):
    assert grpc_call(apps, b"hello") == b"primary:hello"
    assert grpc_call(apps, b"again") == b"primary:again"
    mesh = apps.mesh
    assert mesh.wait(lambda: len(apps.grpc_copy.calls) == 2), apps.grpc_copy.calls
    assert sorted(req for req, _ in apps.grpc_copy.calls) == [b"again", b"hello"]
    assert [req for req, _ in apps.grpc_primary.calls] == [b"hello", b"again"]
    assert mesh.wait(lambda: mesh.stats.mirror.get("answered", 0) >= 2)


def test_http2_route_mirrored_over_http2_with_the_shadow_authority(apps, codec):
    mesh = apps.mesh
    before = mesh.stats.mirror.get("answered", 0)
    out = mesh.curl("h2", "web", 8080, "/post", "-d", "payload-1")
    assert [c for c, _ in out] == [200]
    assert mesh.wait(lambda: len(H2OnlyApp.got) == 1)
    g = H2OnlyApp.got[0]
    assert (g.protocol, g.method, g.path, g.authority, g.body) == ("h2", "POST", "/post", "web-shadow:8080",
                                                                  b"payload-1")
    assert mesh.wait(lambda: mesh.stats.mirror.get("answered", 0) == before + 1)


def test_a_body_larger_than_the_initial_window_is_mirrored_whole(apps, codec, tmp_path):
    """64 KiB (the replay bound) is one byte over HTTP/2's initial 65,535-byte window: the copy
    waits for the mirror's WINDOW_UPDATE to send the rest."""
    body = bytes(range(256)) * 256
    f = tmp_path / "body"
    f.write_bytes(body)
    out = apps.mesh.curl("h2", "web", 8080, "/big", "--data-binary", f"@{f}")
    assert [c for c, _ in out] == [200]
    assert apps.mesh.wait(lambda: len(H2OnlyApp.got) == 1)
    assert H2OnlyApp.got[0].body == body


def test_http11_request_to_an_http2_port_is_mirrored_over_http2(apps, codec):
    """The mirror cluster's port is ``http2``: the copy of an HTTP/1.1 request goes in its
    protocol (on the relay's HTTP/2 codec), so an h2c-only app can take it."""
    out = apps.mesh.curl("h1", "web", 8080, "/from-h1", "-d", "b")
    assert [c for c, _ in out] == [200]
    assert apps.mesh.wait(lambda: len(H2OnlyApp.got) == 1)
    g = H2OnlyApp.got[0]
    assert (g.protocol, g.path, g.authority, g.body) == ("h2", "/from-h1", "web-shadow:8080", b"b")
    assert "connection" not in g.headers and "host" not in g.headers


def test_a_hanging_mirror_never_slows_or_fails_the_primary(apps, codec, monkeypatch):
    monkeypatch.setattr(mirror, "MIRROR_TIMEOUT", 1.5)
    monkeypatch.setattr(mirror, "MAX_IN_FLIGHT", 3)
    mesh = apps.mesh
    before = dict(mesh.stats.mirror)
    started = time.monotonic()
    out = mesh.curl("h2", "web", 8080, "/hang", n=6)
    took = time.monotonic() - started
    assert [c for c, _ in out] == [200] * 6
    assert took < 5, took  # six curl runs; a copy never holds its primary
    assert mirror.in_flight() <= 3
    assert mesh.wait(lambda: len(H2OnlyApp.got) == 3)  # the three the cap let through
    assert mesh.wait(lambda: mirror.in_flight() == 0, 5)  # each timed out and let go
    delta = {k: v - before.get(k, 0) for k, v in mesh.stats.mirror.items()}
    assert delta.get("dropped") == 3 and delta.get("failed") == 3, delta
    assert mesh.wait(lambda: H2OnlyApp.resets == 3)  # the timed-out streams were reset
    # The pooled connection the copies used still serves copies.
    assert [c for c, _ in mesh.curl("h2", "web", 8080, "/after")] == [200]
    assert mesh.wait(lambda: any(g.path == "/after" for g in H2OnlyApp.got))
    assert "mirror_requests" in mesh.stats.as_dict()
    assert 'remora_mirror_requests_total{result="dropped"}' in mesh.stats.render_prometheus()


def test_mirror_percentage_on_grpc(apps, codec):
    """mirrorPercentage 25 on the gRPC route: about a quarter of 200 calls are copied (binomial,
    ±4 standard deviations), every primary answered."""
    mesh = apps.mesh
    full = mesh.router
    assert full is not None and mesh.config is not None
    outbound = tuple(dataclasses.replace(o, routes=tuple(dataclasses.replace(r, mirror_percent=25.0)
                                                         for r in o.routes))
                     for o in mesh.config.outbound)
    cfg = dataclasses.replace(mesh.config, outbound=outbound)

    def swap(router: Any) -> None:
        mesh.router = router
    from sidecar.routing import Router
    mesh.call(lambda: swap(Router(cfg, full)))
    try:
        lp = mesh.port(mesh.vip("echo", 50051), 50051, "h2")
        with grpc.insecure_channel(f"127.0.0.1:{lp}", options=[("grpc.default_authority", "echo:50051")]) as ch:
            call = ch.unary_unary(METHOD)
            assert all(bytes(call(b"%d" % i, timeout=5)) == b"primary:%d" % i for i in range(200))
        time.sleep(0.3)
        assert mesh.wait(lambda: mirror.in_flight() == 0)
        assert 25 <= len(apps.grpc_copy.calls) <= 75, len(apps.grpc_copy.calls)
    finally:
        mesh.call(lambda: swap(full))


def test_a_grpc_mirror_that_is_down_never_fails_the_primary(apps, codec):
    """The copy cannot connect (its server is stopped; the last test of the module): the gRPC
    primary is answered all the same and the copy is counted as failed."""
    apps.grpc_copy.server.stop(0).wait()
    before = apps.mesh.stats.mirror.get("failed", 0)
    assert grpc_call(apps, b"x") == b"primary:x"
    assert apps.mesh.wait(lambda: apps.mesh.stats.mirror.get("failed", 0) == before + 1)
