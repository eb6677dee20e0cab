"""Real traffic through the outbound relays with a real ``Router``, on loopback, no root.

``Harness`` runs, on its own event-loop thread: backend apps (one per endpoint, each speaking
HTTP/1.1 and h2c prior knowledge on one port, recording what they receive) and, per service
port and codec, an outbound relay listener (``H1Downstream`` or ``H2Downstream``) whose
context is what the proxy core gives an app connection to that service's VIP. Clients are
real: curl (``--http1.1`` / ``--http2-prior-knowledge``). Endpoints of the ProxyConfig are
rewritten to the apps' loopback ports, so Istio's YAML drives the real relays unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httptools
import yaml

from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.resources import key_of
from control_plane.sources.files import read_manifests
from sidecar.http import exchange
from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.http2 import H2Context, H2Downstream, H2Pool
from sidecar.routing import Router
from sidecar.stats import Stats
from sidecar.upstream import UpstreamError

H2_PREFACE = b"PRI * HTTP/2.0"


@dataclass(frozen=True)
class Case:
    """What a table case applies: task files (names under ``tasks``) and inline YAML, in
    ``kubectl apply`` order (the last object with a key wins), seen from the client pod ``pod``
    (namespace, name). Loopback builds the client's snapshot in process; pods write the
    resources for the real control plane."""

    sources: tuple[str, ...]
    pod: tuple[str, str]
    tasks: Path

    def objects(self) -> list[dict]:
        objs: list[dict] = []
        for s in self.sources:
            objs += read_manifests(self.tasks / s) if s.endswith(".yaml") else [d for d in yaml.safe_load_all(s) if d]
        return list({key_of(o): o for o in objs}.values())

    def build(self) -> ProxyConfig:
        reg = Registry.from_objects(self.objects())
        assert reg.errors == []
        return SnapshotBuilder(reg, "cluster.local", "ROOTS\n").snapshot_for(ProxyKey(*self.pod)).config


@dataclass
class Seen:
    app: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    protocol: str = "HTTP/1.1"  # or HTTP/2: how the request reached the app


@dataclass
class App:
    """One endpoint's app. ``fail``: answer this status to everything; paths ``/status/N``
    answer N, ``/delay/S`` wait S seconds; else 200 with a JSON echo of the request.
    ``refuse``: reset this many of the next HTTP/2 streams with REFUSED_STREAM (each is recorded
    in ``seen`` as an attempt that arrived; HTTP/1.1 has no stream to refuse and ignores it)."""

    name: str
    port: int = 0
    fail: int | None = None
    refuse: int = 0
    seen: list[Seen] = field(default_factory=list)
    active: int = 0

    async def answer(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     protocol: str = "HTTP/1.1") -> tuple[int, list, bytes]:
        self.seen.append(Seen(self.name, method, path, headers, body, protocol))
        self.active += 1
        try:
            p = path.split("?")[0]
            if p.startswith("/delay/"):
                await asyncio.sleep(float(p[len("/delay/"):]))
            status = self.fail or (int(p[len("/status/"):]) if p.startswith("/status/") else 200)
            out = json.dumps({"app": self.name, "path": path, "headers": headers}).encode()
            return status, [("content-type", "application/json"), ("x-app", self.name)], out
        finally:
            self.active -= 1


class _AppProtocol(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.h2: h2.connection.H2Connection | None = None
        self.buf = b""
        self.parser: Any = None
        self.streams: dict[int, list] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.h2 is None and self.parser is None:
            self.buf += data
            if len(self.buf) < len(H2_PREFACE) and H2_PREFACE.startswith(self.buf):
                return
            data, self.buf = self.buf, b""
            if data.startswith(H2_PREFACE):
                self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                self.h2.initiate_connection()
            else:
                self.parser = httptools.HttpRequestParser(self)
                self.h1_reset()
        if self.h2 is not None:
            self.h2_data(data)
        else:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

    # HTTP/1.1
    def h1_reset(self) -> None:
        self.url, self.hdrs, self.body = b"", {}, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.hdrs[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        args = (method, self.url.decode(), self.hdrs, self.body)
        self.h1_reset()
        asyncio.ensure_future(self.h1_answer(*args))

    async def h1_answer(self, method: str, path: str, headers: dict, body: bytes) -> None:
        status, hdrs, out = await self.app.answer(method, path, headers, body)
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
        head += f"content-length: {len(out)}\r\n\r\n"
        if not self.transport.is_closing():
            self.transport.write(head.encode() + out)

    # h2c
    def h2_data(self, data: bytes) -> None:
        assert self.h2 is not None
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = [dict((k.decode(), v.decode()) for k, v in ev.headers), b""]
            elif isinstance(ev, h2.events.DataReceived):
                self.streams[ev.stream_id][1] += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                hdrs, body = self.streams.pop(ev.stream_id)
                if self.app.refuse and not hdrs[":path"].startswith("/_"):
                    self.app.refuse -= 1
                    self.app.seen.append(Seen(self.app.name, hdrs[":method"], hdrs[":path"], hdrs, body, "HTTP/2"))
                    self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                asyncio.ensure_future(self.h2_answer(ev.stream_id, hdrs, body))
        self.transport.write(self.h2.data_to_send())

    async def h2_answer(self, sid: int, hdrs: dict, body: bytes) -> None:
        assert self.h2 is not None
        plain = {k: v for k, v in hdrs.items() if not k.startswith(":")}
        plain["host"] = hdrs.get(":authority", "")
        status, out_h, out = await self.app.answer(hdrs[":method"], hdrs[":path"], plain, body, "HTTP/2")
        if hdrs[":path"].startswith("/grpc/"):  # a gRPC error: trailers-only, grpc-status N
            code = hdrs[":path"][len("/grpc/"):]
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       ("grpc-status", code)], end_stream=True)
            self.transport.write(self.h2.data_to_send())
            return
        try:
            self.h2.send_headers(sid, [(":status", str(status)), *out_h, ("content-length", str(len(out)))])
            self.h2.send_data(sid, out, end_stream=True)
        except Exception:  # the proxy reset the stream (a retry or timeout)
            return
        if not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())


class PlainConnector:
    """Plaintext TCP in place of the core's mTLS connector (the endpoints have no identity)."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.connects = 0
        self.stats = stats  # as the core's connector: counts what goes through it

    async def connect(self, endpoint: Any, alpn: str, protocol_factory: Callable, timeout: float = 5.0):
        self.connects += 1
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(protocol_factory, endpoint.address, endpoint.port), timeout)
        except OSError as e:  # as the core's connector reports it
            raise UpstreamError("connect_error", str(e)) from e
        return transport, proto, endpoint.identity


class _FlagsSeen:
    """Records each finished exchange's (status, Envoy response flags), as telemetry reads them."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str]] = []
        self.upstreams: list[Any] = []  # Exchange.upstream of each, in the same order
        original = exchange.Exchange.done

        def done(ex: exchange.Exchange, status: int) -> bool:
            counted = original(ex, status)
            if counted:
                self.log.append((status, ex.flags))
                self.upstreams.append(ex.upstream)
            return counted
        exchange.Exchange.done = done  # type: ignore[method-assign]
        self._original = original

    def restore(self) -> None:
        exchange.Exchange.done = self._original  # type: ignore[method-assign]


SEP = "\n@@@"
H2_CLIENT = Path(__file__).parent / "h2_client.py"


def client_argv(codec: str, url: str, args: list[str], n: int, timeout: float) -> list[str]:
    """The client that sends ``n`` requests to ``url`` on one connection, printing
    ``SEP<status>`` after each: curl, or for many HTTP/2 requests h2_client.py, because curl
    7.88 fails the second request on an h2c prior-knowledge connection."""
    proto = "--http1.1" if codec == "h1" else "--http2-prior-knowledge"
    cmd = ["curl", "-s", proto, "--max-time", str(timeout), *args, "-w", SEP + "%{http_code}\n", *[url] * n]
    return cmd if codec == "h1" or n == 1 else [sys.executable, str(H2_CLIENT), *cmd[1:]]


def split_curl_output(out: str) -> list[tuple[int, str]]:
    """The client's output → [(status, body or headers+body)] (status 0: no answer)."""
    results = []
    parts = out.split(SEP)
    body = parts[0]
    for p in parts[1:]:
        code, _, rest = p.partition("\n")
        results.append((int(code or 0), body))
        body = rest
    return results


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` passed (its last value)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class Harness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.apps: dict[str, App] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.router: Router | None = None
        self.config: ProxyConfig | None = None
        self.stats = Stats()  # the proxy's real counters
        self.connector = PlainConnector(self.stats)
        self.h1_pool = H1Pool(self.stats)
        self.h2_pool = H2Pool(self.connector)  # type: ignore[arg-type]
        self.listeners: dict[tuple[str, int, str], int] = {}
        self.flags = _FlagsSeen()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def go() -> Any:
            return fn()
        return self.run(go())

    def app(self, name: str, bind: tuple[str, int] = ("127.0.0.1", 0)) -> App:
        """The app behind endpoint address ``name`` (started on first use, on ``bind``)."""
        if name not in self.apps:
            app = App(name)

            async def start() -> None:
                srv = await self.loop.create_server(lambda: _AppProtocol(app), *bind)
                app.port = srv.sockets[0].getsockname()[1]
                self.servers.append(srv)
            self.run(start())
            self.apps[name] = app
        return self.apps[name]

    def reset(self) -> None:
        """Every app healthy and with nothing seen."""
        for app in self.apps.values():
            app.fail, app.seen, app.refuse = None, [], 0

    def apply(self, cfg: ProxyConfig | Case) -> Router:
        """Push ``cfg`` with every endpoint moved onto its app (named by its address)."""
        if isinstance(cfg, Case):
            cfg = cfg.build()
        clusters = []
        for c in cfg.clusters:
            eps = tuple(dataclasses.replace(e, address="127.0.0.1", port=self.app(e.address).port, identity=None)
                        for e in c.endpoints)
            clusters.append(dataclasses.replace(c, endpoints=eps))
        cfg = dataclasses.replace(cfg, clusters=tuple(clusters))

        def swap() -> Router:
            self.router = Router(cfg, self.router)
            return self.router
        self.config = cfg
        return self.call(swap)

    def app_by_port(self) -> dict[int, App]:
        return {a.port: a for a in self.apps.values()}

    def port(self, vip: str, port: int, codec: str) -> int:
        """The loopback port of an outbound listener standing for connections to ``vip:port``
        (the original destination the proxy core would have read from the socket)."""
        key = (vip, port, codec)
        if key not in self.listeners:
            async def start() -> int:
                if codec == "h1":
                    ctx: Any = H1Context(direction="outbound", connector=self.connector, pool=self.h1_pool,
                                         stats=self.stats, draining=lambda: False,
                                         current_router=lambda: self.router, original_dst=(vip, port))
                    factory: Callable = lambda: H1Downstream(ctx)  # noqa: E731
                else:
                    ctx = H2Context(router=None, outbound_port=None, inbound_target=None,
                                    connector=self.connector, peer_identity=None, stats=self.stats,
                                    draining=lambda: False, pool=self.h2_pool,
                                    current_router=lambda: self.router, original_dst=(vip, port))
                    factory = lambda: H2Downstream(ctx)  # noqa: E731
                srv = await self.loop.create_server(factory, "127.0.0.1", 0)
                self.servers.append(srv)
                return srv.sockets[0].getsockname()[1]
            self.listeners[key] = self.run(start())
        return self.listeners[key]

    def vip(self, service_prefix: str, number: int) -> str:
        assert self.config is not None
        o = next(o for o in self.config.outbound if o.service.startswith(service_prefix) and o.port == number)
        return o.addresses[0]

    def curl(self, codec: str, service: str, number: int, path: str = "/", *args: str, n: int = 1,
             timeout: float = 20) -> list[tuple[int, str]]:
        """``n`` requests on one curl connection: [(status, body or headers+body)]."""
        vip = self.vip(service, number)
        lp = self.port(vip, number, codec)
        own_host = any(a.lower().startswith("host:") for a in args)  # the case sets Host itself
        host = [] if own_host else ["-H", f"host: {service}:{number}"]
        argv = client_argv(codec, f"http://127.0.0.1:{lp}{path}", [*host, *args], n, timeout)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * n + 10).stdout
        return split_curl_output(out)

    def upstream_connects(self) -> int:
        return self.connector.connects

    def flags_of(self, fn: Callable[[], Any]) -> list[str]:
        """The response flags of the exchanges ``fn`` made (in order)."""
        start = len(self.flags.log)
        fn()
        self.wait(lambda: False, 0.05)  # the relay counts right after the last byte
        return [f for _, f in self.flags.log[start:]]

    def wait(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        return wait_until(cond, timeout)

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers:
                s.close()
            self.h1_pool.close_all()
            self.h2_pool.close()
        self.run(stop())
        self.flags.restore()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- run as a script: one app in a pod (tests/sidecar/pod_harness.py) -----------------------------

def _serve(port: int, name: str) -> None:
    """``python traffic_harness.py serve PORT NAME``: an App on 0.0.0.0:PORT, driven from inside
    its pod (tests/sidecar/pod_harness.py) by paths it does not record: ``/_seen`` (the requests
    recorded, JSON), ``/_clear`` (forget them), ``/_fail/N`` (answer N to everything; 0: healthy),
    ``/_refuse/N`` (refuse the next N HTTP/2 streams), ``/_reset`` (all of these) and ``/_active``
    (requests in progress)."""
    app = App(name)
    answer = app.answer

    async def control(method: str, path: str, headers: dict[str, str], body: bytes,
                      protocol: str = "HTTP/1.1") -> tuple[int, list, bytes]:
        if path == "/_seen":
            out = json.dumps([{"method": s.method, "path": s.path, "headers": s.headers,
                               "body": s.body.decode(errors="replace"), "protocol": s.protocol}
                              for s in app.seen]).encode()
            return 200, [("content-type", "application/json")], out
        if path == "/_active":
            return 200, [], str(app.active).encode()
        if path.startswith("/_fail/"):
            app.fail = int(path[len("/_fail/"):]) or None
            return 200, [], b"ok"
        if path.startswith("/_refuse/"):
            app.refuse = int(path[len("/_refuse/"):])
            return 200, [], b"ok"
        if path in ("/_clear", "/_reset"):
            app.seen = []
            app.fail = None if path == "/_reset" else app.fail
            app.refuse = 0 if path == "/_reset" else app.refuse
            return 200, [], b"ok"
        return await answer(method, path, headers, body, protocol)
    app.answer = control  # type: ignore[method-assign]

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(lambda: _AppProtocol(app), "0.0.0.0", port)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())


def _serve_tcp(port: int, name: str) -> None:
    """``python traffic_harness.py serve-tcp PORT NAME``: Istio's tcp-echo on 0.0.0.0:PORT, which
    answers each line with ``NAME line``."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(name.encode() + b" " + line)
            await writer.drain()
        writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(echo, "0.0.0.0", port)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["serve-tcp"]:
        _serve_tcp(int(sys.argv[2]), sys.argv[3])
