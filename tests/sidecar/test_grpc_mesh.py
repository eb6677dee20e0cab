"""gRPC through two meshed pods (issue 15's must-show, on the native HTTP/2 codec and on ``h2``):
grpcio unary, server streaming, an error with trailers (status, message, a ``-bin`` trailer), a
trailers-only error, and a 10 MB message each way while the proxies' memory stays bounded.

Run as a script this module is the gRPC app and client the pods run:
``python test_grpc_mesh.py serve PORT`` and ``... call HOST:PORT CASE`` (prints JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

SERVICE = "remora.test.Must"
BIG = 10 * 1024 * 1024  # the 10 MB message
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
TRACE_BIN = bytes(range(256))  # a binary trailer value: every byte, so base64 must round-trip


def big_payload(n: int) -> bytes:
    """Deterministic and not constant, so a reordered or repeated frame changes the hash."""
    block = hashlib.sha256(b"remora").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


# -- the app -----------------------------------------------------------------------------------
def handler() -> grpc.GenericRpcHandler:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.send_initial_metadata((("x-initial", "1"),))
        ctx.set_trailing_metadata((("x-trailer", "yes"), ("x-trace-bin", TRACE_BIN)))
        return req

    def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        count, size = (int(x) for x in req.decode().split(","))
        for i in range(count):
            yield bytes([i % 251]) * size
        ctx.set_trailing_metadata((("x-sent", str(count)),))

    def fail(req: bytes, ctx: grpc.ServicerContext) -> None:  # abort raises
        ctx.send_initial_metadata((("x-initial", "1"),))  # headers first: the error is in trailers
        ctx.set_trailing_metadata((("x-why", "teapot"), ("x-trace-bin", TRACE_BIN)))
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing: " + req.decode())

    def trailers_only(req: bytes, ctx: grpc.ServicerContext) -> None:
        # Nothing sent before the abort: gRPC answers with one HEADERS frame (END_STREAM).
        ctx.set_trailing_metadata((("x-trace-bin", TRACE_BIN),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def upload(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return f"{len(req)} {hashlib.sha256(req).hexdigest()}".encode()

    def download(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return big_payload(int(req))

    u = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": u(unary), "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": u(fail), "TrailersOnly": u(trailers_only), "Upload": u(upload),
        "Download": u(download)})


def serve(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=UNLIMITED)
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


# -- the client: one case per call, results as plain JSON data ----------------------------------
def plain(md) -> dict:
    """Metadata as JSON: ``-bin`` values (bytes) as hex."""
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in (md or ())}


def call(target: str, case: str) -> dict:
    with grpc.insecure_channel(target, options=UNLIMITED) as ch:
        def m(name: str):
            return ch.unary_unary(f"/{SERVICE}/{name}")
        if case == "unary":
            body, c = m("Unary").with_call(b"hello", timeout=10)
            return {"body": body.decode(), "initial": plain(c.initial_metadata()),
                    "trailing": plain(c.trailing_metadata()), "code": c.code().name}
        if case == "stream":
            it = ch.unary_stream(f"/{SERVICE}/Stream")(b"50,20000", timeout=20)
            msgs = list(it)
            return {"count": len(msgs),
                    "ok": all(x == bytes([i % 251]) * 20000 for i, x in enumerate(msgs)),
                    "trailing": plain(it.trailing_metadata()), "code": it.code().name}
        if case in ("fail", "trailers_only"):
            try:
                m("Fail" if case == "fail" else "TrailersOnly")(b"x", timeout=10)
                return {"code": "OK"}
            except grpc.RpcError as e:
                return {"code": e.code().name, "details": e.details(),
                        "trailing": plain(e.trailing_metadata())}
        if case == "big":
            data = big_payload(BIG)
            up = m("Upload")(data, timeout=60).decode()
            down = m("Download")(str(BIG).encode(), timeout=60)
            return {"up": up, "want": f"{BIG} {hashlib.sha256(data).hexdigest()}",
                    "down_len": len(down), "down_ok": down == data}
    raise SystemExit(f"unknown case {case!r}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 2:
        serve(int(argv[1]))
        return 0
    if argv[:1] == ["call"] and len(argv) == 3:
        print(json.dumps(call(argv[1], argv[2])), flush=True)
        return 0
    print(f"usage: {Path(__file__).name} serve PORT | call HOST:PORT CASE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# -- the tests ---------------------------------------------------------------------------------
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mesh_harness
from mesh_harness import APP_UID, CLIENT_ID, SERVER_ID, Mesh, Service, codec_env, module_node  # noqa: E402,I001

from sidecar.http import h2select  # noqa: E402

pytestmark = pytest.mark.root
APP = str(Path(__file__).resolve())
BIN = Path(sys.executable).parent
PORT = 50051
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GRPC_DNS_RESOLVER": "native"}


@pytest.fixture(scope="module", params=h2select.CODECS)
def codec(request) -> str:
    """The must-show is the native codec's; the ``h2`` fallback runs the same tests."""
    return request.param


@pytest.fixture(scope="module")
def mesh(codec) -> Iterator[Mesh]:
    """One mesh per codec for the module. For nghttp2 the proxies choose it themselves (the
    default when built); ``h2`` is forced with REMORA_H2_CODEC."""
    env = codec_env(codec)
    with module_node("grpc") as node:
        m = Mesh.start(node, BIN, [Service("must", PORT, protocol="grpc")], proxy_env=env)
        try:
            m.spawn_app([sys.executable, APP, "serve", str(PORT)])
            m.wait_port(m.server, PORT)
            yield m
        finally:
            m.close()


def run(mesh: Mesh, case: str) -> dict:
    r = mesh.client.exec([sys.executable, APP, "call", f"must:{PORT}", case], uid=APP_UID,
                         env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr + mesh.logs()
    return json.loads(r.stdout)


def test_the_proxies_run_the_codec_and_say_so(mesh, codec):
    for name in ("client", "server"):
        h = mesh.proxies[name]
        assert f'remora_http2_codec_info{{codec="{codec}"}} 1' in h.metrics().splitlines(), \
            h.metrics()
        assert f"HTTP/2 codec: {codec}" in h.log_text(), h.log_text()


def requests(h, direction: str, peer: str) -> int:
    return sum(int(float(ln.rsplit(" ", 1)[1])) for ln in h.metrics().splitlines()
               if ln.startswith("remora_requests_total{") and f'direction="{direction}"' in ln
               and f'peer_identity="{peer}"' in ln)


def test_unary_with_initial_metadata_and_a_binary_trailer(mesh):
    client, server = mesh.proxies["client"], mesh.proxies["server"]
    before = requests(client, "outbound", SERVER_ID), requests(server, "inbound", CLIENT_ID)
    assert run(mesh, "unary") == {
        "body": "hello", "initial": {"x-initial": "1"}, "code": "OK",
        "trailing": {"x-trailer": "yes", "x-trace-bin": TRACE_BIN.hex()}}
    # Relayed by both proxies over mutual TLS, each naming the other's SPIFFE identity.
    after = requests(client, "outbound", SERVER_ID), requests(server, "inbound", CLIENT_ID)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_server_streaming(mesh):
    assert run(mesh, "stream") == {"count": 50, "ok": True, "trailing": {"x-sent": "50"},
                                   "code": "OK"}


def test_error_with_status_message_and_trailers(mesh):
    assert run(mesh, "fail") == {
        "code": "INVALID_ARGUMENT", "details": "bad thing: x",
        "trailing": {"x-why": "teapot", "x-trace-bin": TRACE_BIN.hex()}}


def test_trailers_only_error_reaches_the_client_as_one_headers_frame(mesh):
    assert run(mesh, "trailers_only") == {
        "code": "NOT_FOUND", "details": "no such thing",
        "trailing": {"x-trace-bin": TRACE_BIN.hex()}}
    # On the wire, after both proxies: one HEADERS frame that ends the stream (no DATA, no
    # second HEADERS), carrying :status and grpc-status together.
    body = mesh.tmp / "req.grpc"
    body.write_bytes(b"\0" + struct.pack(">I", 1) + b"x")
    os.chmod(body, 0o644)  # read by nghttp as the app uid
    r = mesh.client.exec(["nghttp", "-v", "-d", str(body), "-H", "content-type: application/grpc",
                          "-H", "te: trailers", f"http://must:{PORT}/{SERVICE}/TrailersOnly"],
                         uid=APP_UID, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + mesh.logs()
    sid = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>", r.stdout)
    assert sid, r.stdout
    lines = r.stdout.splitlines()
    frames = [i for i, ln in enumerate(lines) if " recv " in ln and " frame <" in ln
              and f"stream_id={sid[1]}>" in ln]
    assert len(frames) == 1 and "recv HEADERS" in lines[frames[0]], r.stdout
    assert "END_STREAM" in lines[frames[0] + 1], r.stdout
    got = [ln.split(") ", 1)[1] for ln in lines if f"recv (stream_id={sid[1]})" in ln]
    assert ":status: 200" in got and "grpc-status: 5" in got, r.stdout


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_10mb_message_each_way_streams_through_with_bounded_proxy_memory(mesh):
    pids = {name: h.proc.pid for name, h in mesh.proxies.items()}
    for pid in pids.values():  # the pid is the proxy itself (ip netns exec and setpriv exec)
        assert "remora-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    before = {n: (_status_kb(p, "VmRSS"), _status_kb(p, "VmHWM")) for n, p in pids.items()}
    res = run(mesh, "big")
    assert res["up"] == res["want"], res  # the server got all 10 MB, intact
    assert res["down_len"] == BIG and res["down_ok"], res  # and the client too
    for name, pid in pids.items():
        rss, hwm = _status_kb(pid, "VmRSS"), _status_kb(pid, "VmHWM")
        # A proxy that held the message whole would grow by 10 MB at its peak (VmHWM); flow
        # control bounds what it holds to the windows (2 MiB per connection) and its buffers.
        assert hwm - before[name][1] < BIG // 2 // 1024, (name, before[name], rss, hwm)
        assert rss - before[name][0] < BIG // 2 // 1024, (name, before[name], rss, hwm)
