"""HTTP/2 and gRPC through two meshed pods: remora-init iptables rules and a remora-proxy in each,
mutual TLS (ALPN remora-h2) between the proxies, plaintext h2 from 127.0.0.6 to the app.

Run as a script it measures h2load through the pair against h2load straight at the app:
``python tests/sidecar/test_http2_mesh.py bench`` (root; prints one JSON line).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mesh_harness when run directly
from mesh_harness import (  # noqa: E402
    APP_UID,
    CLIENT_ID,
    SERVER_ID,
    Mesh,
    Service,
    codec_env,
    module_node,
)

from control_plane.api import ports  # noqa: E402
from sidecar.http import h2select  # noqa: E402

pytestmark = pytest.mark.root
BIN = Path(sys.executable).parent  # remora-proxy, remora-init
APP = str(Path(__file__).with_name("test_http2.py"))  # the gRPC app and client (see there)
GRPC_PORT = 50051
H2C_PORT = 8081  # nghttpd, plain HTTP/2 with prior knowledge
ECHO_PORT = 8082  # plain HTTP/2 app answering with the request headers it received


def start_mesh(node, bin_dir, codec: str | None = None) -> Mesh:
    """``codec``: the proxies' REMORA_H2_CODEC (None: what they choose themselves)."""
    env = codec_env(codec) if codec else None
    m = Mesh.start(node, bin_dir, [Service("echo", GRPC_PORT, protocol="grpc"),
                                   Service("h2web", H2C_PORT, protocol="http2"),
                                   Service("h2echo", ECHO_PORT, protocol="http2")],
                   proxy_env=env)
    try:
        m.spawn_app([sys.executable, APP, "serve", str(GRPC_PORT)])
        www = m.tmp / "www"
        www.mkdir()
        (www / "index.html").write_bytes(b"x" * 1024)
        os.chmod(www, 0o755)
        m.spawn_app(["nghttpd", "--no-tls", "-d", str(www), str(H2C_PORT)])
        m.spawn_app([sys.executable, APP, "h2echo", str(ECHO_PORT)])
        m.wait_port(m.server, GRPC_PORT)
        m.wait_port(m.server, H2C_PORT)
        m.wait_port(m.server, ECHO_PORT)
    except BaseException:
        m.close()
        raise
    return m


@pytest.fixture(scope="module", params=h2select.CODECS)
def codec(request) -> str:
    """Every test here runs once per codec of the proxies (test ids ``[nghttp2]``, ``[h2]``)."""
    return request.param


@pytest.fixture(scope="module")
def mesh(codec) -> Iterator[Mesh]:
    """One mesh per codec, shared by the module's tests (they assert on metric deltas)."""
    with module_node("h2m") as node:
        m = start_mesh(node, BIN, codec)
        try:
            yield m
        finally:
            m.close()


@pytest.fixture
def own_mesh(node, bin_dir, codec) -> Iterator[Mesh]:
    """A mesh of the test's own, for a test that stops a proxy."""
    m = start_mesh(node, bin_dir, codec)
    try:
        yield m
    finally:
        m.close()


def counter(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return counter(after, name, **labels) - counter(before, name, **labels)


def h2load(pod, url: str, uid: int, n: int, clients: int, streams: int) -> dict:
    r = pod.exec(["h2load", "-n", str(n), "-c", str(clients), "-m", str(streams), url],
                 uid=uid, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", r.stdout)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
    assert done and rps, r.stdout
    return {"succeeded": int(done[4]), "rps": float(rps[1]), "out": r.stdout}


ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GRPC_DNS_RESOLVER": "native"}


def test_grpc_unary_streaming_and_error_status_through_the_mesh(mesh):
    out0, srv0 = mesh.proxies["client"].metrics(), mesh.proxies["server"].metrics()
    r = mesh.client.exec([sys.executable, APP, "call", f"echo:{GRPC_PORT}"], uid=APP_UID,
                         env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr + mesh.logs()
    res = json.loads(r.stdout)
    assert res["unary"]["body"] == "hello"
    assert res["unary"]["trailing"]["x-trailer"] == "yes"
    assert res["large_ok"] is True  # 1 MiB each way through 64 KiB stream windows
    assert res["stream"] == {"count": 40, "ok": True}
    assert res["fail"] == {"code": "NOT_FOUND", "details": "no such thing: x",
                           "trailing": {"x-why": "teapot"}}
    # Both proxies relayed it as HTTP/2 over mTLS, each naming the other's SPIFFE identity.
    # Four calls, all HTTP 200 (a gRPC error travels in grpc-status).
    out, srv = mesh.proxies["client"].metrics(), mesh.proxies["server"].metrics()
    labels = dict(direction="outbound", response_code="200",
                  service="echo.default.svc.cluster.local", peer_identity=SERVER_ID)
    assert delta(out0, out, "remora_requests_total", **labels) == 4, out
    assert delta(srv0, srv, "remora_requests_total", direction="inbound",
                 peer_identity=CLIENT_ID) == 4, srv
    # The four calls shared one pooled h2 connection between the proxies (this test's, or
    # one an earlier test of this module opened to the same endpoint).
    assert delta(srv0, srv, "remora_tls_handshakes_total", side="server") <= 1, srv


def test_forged_xfcc_from_a_grpc_client_never_reaches_the_app(mesh):
    r = mesh.client.exec([sys.executable, APP, "xfcc", f"echo:{GRPC_PORT}"], uid=APP_UID,
                         env=ENV, timeout=30)
    assert r.returncode == 0, r.stderr + mesh.logs()
    # The app saw one XFCC, the server proxy's statement about the mTLS-verified client.
    assert json.loads(r.stdout)["x-seen-xfcc"] == f"By={SERVER_ID};URI={CLIENT_ID}"


def test_forged_xfcc_from_a_plain_http2_client_never_reaches_the_app(mesh):
    r = mesh.client.exec(["nghttp", "-H", "x-forwarded-client-cert: By=x;URI=spiffe://evil",
                          "-H", "x-request-id: given-1", f"http://h2echo:{ECHO_PORT}/who"],
                         uid=APP_UID, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + mesh.logs()
    seen = json.loads(r.stdout)
    assert [v for n, v in seen if n == "x-forwarded-client-cert"] == [
        f"By={SERVER_ID};URI={CLIENT_ID}"]
    assert [v for n, v in seen if n == "x-request-id"] == ["given-1"]  # kept, never doubled


def test_drain_lets_an_inflight_grpc_stream_finish(own_mesh):
    mesh = own_mesh
    proc = mesh.spawn_app([sys.executable, APP, "stream", f"echo:{GRPC_PORT}", "15,100,0.1"],
                          pod=mesh.client, env=ENV, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"message 1\n", mesh.logs()
    assert "draining" in mesh.proxies["client"].admin("/drain", "POST")
    lines = proc.communicate(timeout=30)[0].decode().splitlines()
    # The client proxy sent GOAWAY, yet the stream it had accepted ran to its end.
    assert lines[-2:] == ["message 15", '{"code": "OK"}'], lines + [mesh.logs()]
    assert mesh.proxies["client"].proc.wait(10) == 0  # and the drained proxy exited cleanly


def test_h2load_multiplexes_over_one_mtls_connection(mesh):
    srv0 = mesh.proxies["server"].metrics()
    res = h2load(mesh.client, f"http://h2web:{H2C_PORT}/index.html", APP_UID, 2000, 4, 10)
    assert res["succeeded"] == 2000, res["out"] + mesh.logs()
    # 4 client connections × 10 streams went through one pooled proxy-to-proxy connection.
    srv = mesh.proxies["server"].metrics()
    assert delta(srv0, srv, "remora_tls_handshakes_total", side="server") <= 1, srv
    assert delta(srv0, srv, "remora_requests_total", direction="inbound", response_code="200",
                 peer_identity=CLIENT_ID) == 2000, srv


def test_proxies_report_the_codec_they_run(mesh, codec):
    for name in ("client", "server"):
        h = mesh.proxies[name]
        assert f'remora_http2_codec_info{{codec="{codec}"}} 1' in h.metrics().splitlines()
        assert f"HTTP/2 codec: {codec}" in h.log_text(), h.log_text()


def test_a_bad_codec_name_is_a_one_line_error(node, tmp_path):
    pod = node.add_pod("bad")
    (tmp_path / "bootstrap.json").write_text(json.dumps({"config": {
        "version": "v", "outbound": [], "clusters": []}}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REMORA_H2_CODEC": "nghttp3",
           "REMORA_BOOTSTRAP": str(tmp_path / "bootstrap.json"), "REMORA_WORKDIR": str(tmp_path)}
    r = subprocess.run(pod.command([str(BIN / "remora-proxy")]), env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("remora-proxy: REMORA_H2_CODEC='nghttp3': expected one of "
                                "nghttp2, h2"), r.stderr
    assert r.stdout == ""


def bench() -> dict:
    """h2load req/s: straight at the app (same pod, loopback) and through both sidecars."""
    from local_cluster import netns

    node = netns.Node.create(netns.new_prefix("h2b"))
    try:
        m = start_mesh(node, Path(sys.executable).parent)
        try:
            args = dict(n=20000, clients=4, streams=10)
            h2load(m.client, f"http://h2web:{H2C_PORT}/index.html", APP_UID, 1000, 4, 10)  # warm
            # The proxy uid is never intercepted: direct traffic to the app from inside its pod.
            direct = h2load(m.server, f"http://127.0.0.1:{H2C_PORT}/index.html", ports.PROXY_UID,
                            **args)
            pair = h2load(m.client, f"http://h2web:{H2C_PORT}/index.html", APP_UID, **args)
            return {"direct_rps": direct["rps"], "pair_rps": pair["rps"],
                    "ratio": round(pair["rps"] / direct["rps"], 3), **args}
        finally:
            m.close()
    finally:
        node.destroy()


if __name__ == "__main__":
    if sys.argv[1:] != ["bench"]:
        print(f"usage: {Path(__file__).name} bench", file=sys.stderr)
        sys.exit(2)
    try:
        print(json.dumps(bench()))
    except (AssertionError, subprocess.SubprocessError) as e:
        print(f"bench failed: {e}", file=sys.stderr)
        sys.exit(1)
