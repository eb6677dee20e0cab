"""The sidecar's app-health probe runner against real HTTP(S), TCP and gRPC servers."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from injector import certs
from injector.meshconfig import MeshConfig
from injector.template import PROXY_NAME, inject_pod
from sidecar import app_health


async def _serve_app(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def header(request: web.Request) -> web.Response:
        ok = request.headers.get("X-Probe") == "yes" and request.headers.get("Host") == "app.local"
        return web.Response(status=200 if ok else 401)

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/header", header)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    runner, port = await _serve_app()
    yield port
    await runner.cleanup()


@pytest.fixture
async def https_port(tmp_path: Path) -> AsyncIterator[int]:
    files = certs.generate(tmp_path, ["localhost", "127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    runner, port = await _serve_app(context)
    yield port
    await runner.cleanup()


@pytest.fixture
async def grpc_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("reviews", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(None)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """Accepts connections and never answers: probes must time out."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more
    return port


async def _run(probe: dict) -> tuple[int, str]:
    return await app_health.run_probe("/app-health/app/readyz", {"/app-health/app/readyz": probe})


@pytest.mark.parametrize(("path", "expected"), [
    ("/status/200", 200), ("/status/204", 200), ("/redirect", 200),
    ("/status/404", 503), ("/status/500", 503),
])
async def test_http_probe_success_is_200_to_399(http_port: int, path: str, expected: int) -> None:
    status, why = await _run({"httpGet": {"path": path, "port": http_port}, "timeoutSeconds": 2})
    assert status == expected, why


async def test_http_probe_sends_headers(http_port: int) -> None:
    probe = {"path": "/header", "port": http_port}
    assert (await _run({"httpGet": probe}))[0] == 503
    probe["httpHeaders"] = [{"name": "X-Probe", "value": "yes"}, {"name": "Host", "value": "app.local"}]
    assert (await _run({"httpGet": probe}))[0] == 200


async def test_https_probe_does_not_verify_the_certificate(https_port: int) -> None:
    ok = {"httpGet": {"path": "/status/200", "port": https_port, "scheme": "HTTPS"}}
    bad = {"httpGet": {"path": "/status/503", "port": https_port, "scheme": "HTTPS"}}
    assert (await _run(ok))[0] == 200
    assert (await _run(bad))[0] == 503


async def test_tcp_probe(http_port: int) -> None:
    assert (await _run({"tcpSocket": {"port": http_port}}))[0] == 200
    status, why = await _run({"tcpSocket": {"port": _closed_port()}})
    assert status == 503 and "ConnectionRefused" in why


async def test_grpc_probe_uses_the_health_service(grpc_port: int) -> None:
    status, why = await _run({"grpc": {"port": grpc_port}})
    assert (status, why.endswith("SERVING")) == (200, True)
    status, why = await _run({"grpc": {"port": grpc_port, "service": "reviews"}})
    assert status == 503 and "NOT_SERVING" in why
    status, why = await _run({"grpc": {"port": grpc_port, "service": "nope"}})
    assert status == 503 and "grpc-status 5" in why  # NOT_FOUND for an unknown service


async def test_probes_time_out(silent_port: int) -> None:
    for probe in ({"httpGet": {"path": "/", "port": silent_port}},
                  {"grpc": {"port": silent_port}}):
        status, why = await _run({**probe, "timeoutSeconds": 0.3})
        assert status == 503 and "timed out" in why


async def test_unknown_path_is_404() -> None:
    assert (await app_health.run_probe("/app-health/x/livez", {}))[0] == 404


def test_env_must_be_well_formed() -> None:
    assert app_health.parse_probes("") == {}
    for bad in ("[", "[]", '{"/x": {"httpGet": {"port": 1}}}', '{"/app-health/a/livez": {}}',
                '{"/app-health/a/livez": {"tcpSocket": {"port": "http"}}}'):
        with pytest.raises(ValueError, match="REMORA_APP_PROBES"):
            app_health.parse_probes(bad)


async def test_injected_probes_run_against_the_app(
    http_port: int, grpc_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the injector writes into REMORA_APP_PROBES is what the runner executes."""
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{
        "name": "app", "image": "app:1", "ports": [{"name": "web", "containerPort": http_port}],
        "readinessProbe": {"httpGet": {"path": "/status/200", "port": "web"}},
        "livenessProbe": {"tcpSocket": {"port": http_port}},
        "startupProbe": {"grpc": {"port": grpc_port}},
    }]}}
    injected = inject_pod(pod, MeshConfig())
    proxy = next(c for c in injected["spec"]["initContainers"] if c["name"] == PROXY_NAME)
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    monkeypatch.setenv(app_health.ENV, env[app_health.ENV])
    monkeypatch.setattr(app_health, "_cached", None)
    app = injected["spec"]["containers"][0]
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = app[kind]["httpGet"]["path"]
        assert (await app_health.run_probe(path))[0] == 200, (kind, json.loads(env[app_health.ENV]))
