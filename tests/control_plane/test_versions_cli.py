"""``remoractl version`` and the OUTDATED mark of ``remoractl proxy-status``, against a real
control plane's monitoring port, a real injector's ``/version`` and a real proxy client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from cp_harness import FakeRuntime, RunningControlPlane, running_client
from test_remoractl import remoractl

from control_plane.api.version import version
from injector.meshconfig import MeshConfig
from injector.metrics import Counters, serve_metrics
from injector.template import template_hash, version_info
from remoractl import meshapi
from sidecar import discovery as sidecar_discovery


@pytest.fixture
async def injector_url(unused_tcp_port_factory) -> AsyncIterator[str]:
    port = unused_tcp_port_factory()
    runner = await serve_metrics(Counters(), "127.0.0.1", port, version_info(MeshConfig()))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_outdated_verdicts() -> None:
    inj = {"proxyVersion": "0.2.0", "templateHash": "h2"}
    assert meshapi.outdated({"proxy_version": "0.2.0", "template_hash": "h2"}, inj) == (False, "")
    assert meshapi.outdated({"proxy_version": "0.1.0", "template_hash": "h2"}, inj)[0] is True
    assert meshapi.outdated({"proxy_version": "0.2.0", "template_hash": "h1"}, inj) == (
        True, "template h1, injector's is h2")
    assert meshapi.outdated({"proxy_version": "0.2.0", "template_hash": ""}, inj)[0] is False
    assert meshapi.outdated({"proxy_version": "0.2.0"}, None) == (None, "injector not reachable")


async def test_version_and_outdated_proxies(control_plane: RunningControlPlane, injector_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cp = control_plane
    urls = ["--control-plane-url", cp.monitoring_url, "--injector-url", injector_url]
    current = template_hash(MeshConfig())
    rt_new, rt_old = FakeRuntime(), FakeRuntime()
    async with running_client(cp, rt_new) as new:
        new.s.template_hash = current
        await cp.wait(lambda: "reviews-v1.shop" in cp.server.connections)
        # A second proxy from an older release and template.
        monkeypatch.setattr(sidecar_discovery, "PROXY_VERSION", "0.0.9")
        async with running_client(cp, rt_old, pod="reviews-v2") as old:
            old.s.template_hash = "0123456789abcdef"
            await cp.wait(lambda: "reviews-v2.shop" in cp.server.connections)
            code, out, _ = await remoractl("version", *urls)
            assert code == 0, out
            assert out.splitlines() == [
                f"client version: {version()}",
                f"control plane version: {version()} (revision default)",
                f"injector version: {version()} (revision default; injects proxy {version()}, "
                f"template {current})",
                f"data plane version: 0.0.9 (1 proxy), {version()} (1 proxy)",
            ]
            code, out, _ = await remoractl("version", "-o", "json", *urls)
            body = json.loads(out)
            assert body["dataPlane"] == {"0.0.9": 1, version(): 1}
            assert body["injector"]["templateHash"] == current

            code, out, _ = await remoractl("proxy-status", *urls)
            rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
            assert "OUTDATED" in rows["reviews-v2.shop"] and "OUTDATED" not in rows["reviews-v1.shop"]
            assert "1 proxy(ies) OUTDATED" in out
            code, out, _ = await remoractl("proxy-status", "-o", "json", *urls)
            by_id = {p["proxy_id"]: p for p in json.loads(out)["proxies"]}
            assert by_id["reviews-v1.shop"]["template_hash"] == current
            assert by_id["reviews-v2.shop"]["outdated_reason"] == f"proxy 0.0.9, injector injects {version()}"


async def test_version_without_a_mesh(injector_url: str) -> None:
    code, out, _ = await remoractl("version", "--client")
    assert (code, out.strip()) == (0, f"client version: {version()}")
    assert (await remoractl("version", "--client", "--short"))[1] == f"{version()}\n"
    # Two control planes (revisions): both shown; one unreachable fails the command.
    code, out, _ = await remoractl("version", "--control-plane-url", injector_url, "--control-plane-url",
                                   "http://127.0.0.1:9", "-o", "json")
    assert code == 1 and len(json.loads(out)["controlPlanes"]) == 2
    # The control plane's URL pointing at the injector: named, not misread.
    code, out, _ = await remoractl("version", "--control-plane-url", injector_url)
    assert code == 1 and "is not a remora control-plane" in out
    # The only control plane unreachable: one line on stderr, nothing on stdout.
    code, out, err = await remoractl("version", "--control-plane-url", "http://127.0.0.1:9")
    assert (code, out) == (1, "")
    assert err.startswith("remoractl version: cannot reach the control plane at 127.0.0.1:9")
