"""``remoractl check`` (install) and ``check --proxy`` against a real control plane, a real
injector monitoring port, a real TLS webhook endpoint and real proxy clients; each check also
against a broken setup (unreachable, wrong CA, wrong name, near expiry, NACKing or outdated
proxies, a namespace without the root certificate)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiohttp import web
from cp_harness import FakeRuntime, RunningControlPlane, running_client
from test_remoractl import remoractl
from test_versions_cli import injector_url  # noqa: F401 (a fixture)

from injector import certs
from injector.meshconfig import MeshConfig
from injector.template import template_hash
from remoractl import checks
from remoractl.target import from_url
from sidecar import discovery as sidecar_discovery

NAME = "remora-injector.remora-system.svc"


@pytest.fixture
async def webhook(tmp_path: Path, unused_tcp_port_factory) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS endpoint with the injector's own generated certificate (as it serves 9443)."""
    files = certs.generate(tmp_path / "webhook", certs.default_sans())
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port := unused_tcp_port_factory(), ssl_context=ctx).start()
    try:
        yield f"127.0.0.1:{port}", files.ca
    finally:
        await runner.cleanup()


async def test_install_checks_pass_and_fail(control_plane: RunningControlPlane, injector_url: str,  # noqa: F811
                                            webhook: tuple[str, Path], tmp_path: Path) -> None:
    cp = control_plane
    address, ca = webhook
    (tmp_path / "root.pem").write_bytes(cp.ca.root_pem)
    args = ["check", "--control-plane-url", cp.monitoring_url, "--injector-url", injector_url,
            "--webhook-address", address, "--webhook-ca", str(ca), "--root-cert", str(tmp_path / "root.pem"),
            "--local-dir", str(tmp_path / "no-local-cluster")]
    code, out, _ = await remoractl(*args)
    assert code == 0, out
    assert [line[0] for line in out.splitlines() if line[:1] and line[0] in "\u2714\u2716"] == ["\u2714"] * 4
    code, out, _ = await remoractl(*args, "-o", "json")
    assert [r["name"] for r in json.loads(out)] == [
        "control plane ready", "injector ready", "webhook certificate", "CA root expiry"]

    # Broken: a control plane that has not built any configuration yet.
    built, cp.server.last_build_at = cp.server.last_build_at, None
    r = await asyncio.to_thread(checks.control_plane_ready, from_url(cp.monitoring_url))
    assert not r.ok and r.detail == "running but has built no configuration yet"
    cp.server.last_build_at = built
    # Broken: the control plane and the injector unreachable.
    # The checks are still printed; one line on stderr says what to do.
    code, out, err = await remoractl("check", "--control-plane-url", "http://127.0.0.1:9", "--injector-url",
                                     "http://127.0.0.1:9", "--local-dir", str(tmp_path / "none"))
    assert code == 1
    assert "\u2716 control plane ready: cannot reach the control plane at 127.0.0.1:9" in out
    assert "\u2716 injector ready: cannot reach the injector at 127.0.0.1:9" in out and "hint: " in out
    (line,) = err.splitlines()
    assert line.startswith("remoractl check: cannot reach the control plane at 127.0.0.1:9")
    assert "\u2716 webhook certificate: no webhook address and caBundle to check" in out


async def test_webhook_certificate_broken(webhook: tuple[str, Path], tmp_path: Path) -> None:
    address, ca = webhook
    check = partial(asyncio.to_thread, checks.webhook_certificate)  # the server runs on this loop
    assert (await check(address, ca, NAME)).ok
    other = certs.generate(tmp_path / "other", certs.default_sans())
    r = await check(address, other.ca, NAME)
    assert not r.ok and r.detail == f"{address}: certificate signature failure" and "caBundle" in r.hint
    r = await check(address, ca, "evil.example")
    assert not r.ok and "mismatch" in r.detail.lower()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=350)
    r = await check(address, ca, NAME, now=later)
    assert not r.ok and "expires" in r.detail
    r = await check("127.0.0.1:9", ca, NAME)
    assert not r.ok and r.detail.startswith("cannot connect to 127.0.0.1:9")


def test_root_expiry(tmp_path: Path) -> None:
    from control_plane.ca import CertificateAuthority
    root = CertificateAuthority.generate().root_pem
    assert checks.root_expiry(root).ok
    r = checks.root_expiry(root, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3640))
    assert not r.ok and "expires in" in r.detail and "rotate" in r.hint
    r = checks.root_expiry(root, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=4000))
    assert not r.ok and "expired" in r.detail
    assert not checks.root_expiry(b"not a certificate").ok


def test_namespaces_have_root() -> None:
    def ns(name: str, **labels: str) -> dict:
        return {"metadata": {"name": name, "labels": labels}}

    def cm(pem: str) -> dict:
        return {"data": {"root-cert.pem": pem}}

    spaces = [ns("shop", **{"remora.dev/inject": "enabled"}), ns("canary", **{"remora.dev/rev": "c"}),
              ns("plain")]
    assert checks.namespaces_have_root(spaces, {"shop": cm("R"), "canary": cm("R\n")}, b"R").ok
    r = checks.namespaces_have_root(spaces, {"shop": cm("OLD")}, b"R")
    assert not r.ok and r.detail == "missing in canary; a different root in shop"


async def test_proxy_checks(control_plane: RunningControlPlane, injector_url: str, tmp_path: Path,  # noqa: F811
                            monkeypatch: pytest.MonkeyPatch) -> None:
    cp = control_plane
    args = ["check", "--proxy", "--control-plane-url", cp.monitoring_url, "--injector-url", injector_url,
            "--local-dir", str(tmp_path / "none"), "--cert-margin", "10", "-o", "json"]
    rt = FakeRuntime()
    async with running_client(cp, rt) as client:
        client.s.template_hash = template_hash(MeshConfig())
        st = lambda: cp.server.connections["reviews-v1.shop"].state  # noqa: E731
        await cp.wait(lambda: "reviews-v1.shop" in cp.server.connections and st().status() == "SYNCED"
                      and st().cert_not_after)
        _, out, _ = await remoractl(*args)
        by_name = {r["name"]: r for r in json.loads(out)}
        for name in ("data plane up to date", "every proxy SYNCED", "proxy certificates not near expiry"):
            assert by_name[name]["ok"], by_name[name]
        # Certificates last 60 s in this harness: a 1 h margin flags them.
        _, out, _ = await remoractl(*args[:-4], "--cert-margin", "3600", "-o", "json")
        assert not {r["name"]: r for r in json.loads(out)}["proxy certificates not near expiry"]["ok"]
        # An outdated proxy that NACKs its configuration.
        monkeypatch.setattr(sidecar_discovery, "PROXY_VERSION", "0.0.1")
        async with running_client(cp, FakeRuntime(reject="bad route"), pod="reviews-v2"):
            await cp.wait(lambda: "reviews-v2.shop" in cp.server.connections
                          and cp.server.connections["reviews-v2.shop"].state.status() == "ERROR")
            code, out, _ = await remoractl(*args[:-2])
            assert code == 1
            assert "\u2716 data plane up to date: 1 of 2 OUTDATED: reviews-v2.shop (proxy 0.0.1" in out
            assert "\u2716 every proxy SYNCED: 1 of 2 not SYNCED: reviews-v2.shop ERROR (bad route)" in out

