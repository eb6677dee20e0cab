"""The discovery/CA server over real TLS WebSockets: proxies are authenticated, certified,
configured, and tracked; bad tokens and bad CSRs are refused with a reason."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from cp_harness import FakeRuntime, RunningControlPlane, running_client
from cryptography import x509

from control_plane.api import discovery as wire
from control_plane.api import identity as ident
from control_plane.api.wsclient import WebSocket, connect

REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"


async def open_stream(cp: RunningControlPlane, token: str, pod: str = "reviews-v1") -> WebSocket:
    ws = await connect("127.0.0.1", cp.port, wire.PATH, cp.client_ssl, server_hostname="localhost")
    await ws.send_text(wire.encode(wire.HELLO, token=token, pod=pod, namespace="shop", proxy_version="t"))
    return ws


async def recv(ws: WebSocket, *types: str) -> dict:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["type"] in types:
            return msg


async def proxy_status(cp: RunningControlPlane) -> dict[str, dict]:
    async with aiohttp.ClientSession() as s, s.get(cp.monitoring_url + "/debug/proxies") as r:
        return {p["proxy_id"]: p for p in (await r.json())["proxies"]}


async def test_proxy_gets_certificate_and_config_and_is_synced(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime()
    async with running_client(cp, rt) as client:
        await cp.wait(lambda: rt.configs and rt.certs)
        key_pem, chain_pem, roots = rt.certs[0]
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        assert ident.spiffe_ids_of_cert(leaf) == [REVIEWS]
        assert roots == cp.ca.root_pem
        # The key was made by the helper process, stays in the workdir (0600), matches the cert.
        key_file = client.dir / "key.pem"
        assert key_file.read_bytes() == key_pem and key_file.stat().st_mode & 0o777 == 0o600
        assert rt.configs[0].outbound[0].service == "reviews.shop.svc.cluster.local"
        assert rt.configs[0].trust_bundle == cp.ca.root_pem.decode()
        await cp.wait(lambda: cp.server.connections["reviews-v1.shop"].state.status() == "SYNCED")
        st = (await proxy_status(cp))["reviews-v1.shop"]
        assert (st["identity"], st["status"], st["acked_version"]) == (REVIEWS, "SYNCED", rt.configs[0].version)


async def test_config_change_is_pushed_without_reconnecting(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime()
    async with running_client(cp, rt) as client:
        await cp.wait(lambda: rt.configs)
        base = (cp.manifests / "base.yaml").read_text()
        (cp.manifests / "base.yaml").write_text(base.replace("198.18.0.21", "198.18.0.31"))
        await cp.wait(lambda: len(rt.configs) == 2)
        assert rt.configs[1].clusters[0].endpoints[0].address == "198.18.0.31"
        assert client.sessions == 1


async def test_invalid_snapshot_is_nacked_and_status_is_error(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime()
    async with running_client(cp, rt) as client:
        await cp.wait(lambda: rt.configs)
        good = client.applied_version
        # Two services claiming the same VIP:port: the proxy's strict decoder rejects the snapshot.
        clash = (cp.manifests / "base.yaml").read_text().split("---")[0].replace("name: reviews,", "name: clash,")
        (cp.manifests / "clash.yaml").write_text(clash)
        state = cp.server.connections["reviews-v1.shop"].state
        await cp.wait(lambda: state.status() == "ERROR")
        st = (await proxy_status(cp))["reviews-v1.shop"]
        assert "198.19.0.10:9080 is claimed by two services" in st["last_error"]
        assert st["acked_version"] == good == client.applied_version and len(rt.configs) == 1
        (cp.manifests / "clash.yaml").unlink()  # fixed: the next version is ACKed again
        await cp.wait(lambda: state.status() == "SYNCED")


async def test_runtime_rejection_is_nacked_with_its_reason(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime(reject="outbound[0]: cannot bind listener")
    async with running_client(cp, rt):
        await cp.wait(lambda: "reviews-v1.shop" in cp.server.connections
                      and cp.server.connections["reviews-v1.shop"].state.status() == "ERROR")
        assert cp.server.connections["reviews-v1.shop"].state.last_error == "outbound[0]: cannot bind listener"


async def test_csr_for_another_identity_is_refused(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    ws = await open_stream(cp, cp.token(sa="reviews"))
    welcome = await recv(ws, wire.WELCOME)
    assert welcome["identity"] == REVIEWS
    csr = ident.make_csr(ident.generate_key(), "spiffe://cluster.local/ns/shop/sa/admin").decode()
    await ws.send_text(wire.encode(wire.CSR, request_id="1", csr=csr))
    err = await recv(ws, wire.ERROR)
    assert err["request_id"] == "1" and not err["fatal"]
    assert "asks for ['spiffe://cluster.local/ns/shop/sa/admin'] but the token proves " + REVIEWS in err["reason"]
    await ws.send_text(wire.encode(wire.CSR, request_id="2", csr="-----BEGIN CERTIFICATE REQUEST-----\nxx"))
    assert "malformed CSR" in (await recv(ws, wire.ERROR))["reason"]
    await ws.close()
    assert cp.server.metrics["csr_refused"] == 2


@pytest.mark.parametrize(("make_token", "reason"), [
    (lambda cp: cp.token(ttl=5, now=time.time() - 60), "token expired"),
    (lambda cp: cp.token()[:-4] + "AAAA", "signature is invalid"),
    (lambda cp: cp.token(pod="other-pod"), "the token proves other-pod.shop"),
])
async def test_bad_tokens_are_refused(control_plane: RunningControlPlane, make_token, reason: str) -> None:
    cp = control_plane
    ws = await open_stream(cp, make_token(cp))
    err = await recv(ws, wire.ERROR)
    assert err["fatal"] and reason in err["reason"]
    assert cp.server.metrics["auth_failures"] == 1 and not cp.server.connections
    await ws.close()


async def test_proxy_config_endpoint_shows_what_the_proxy_holds(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime()
    async with running_client(cp, rt):
        await cp.wait(lambda: rt.certs and cp.server.connections["reviews-v1.shop"].state.acked)
        async with aiohttp.ClientSession() as s:
            async with s.get(cp.monitoring_url + "/debug/config", params={"proxy": "reviews-v1.shop"}) as r:
                body = await r.json()
            assert body["config"]["version"] == rt.configs[0].version
            async with s.get(cp.monitoring_url + "/debug/config", params={"proxy": "nope"}) as r:
                assert r.status == 404 and "reviews-v1.shop" in (await r.json())["error"]
            async with s.get(cp.monitoring_url + "/metrics") as r:
                assert "remora_control_certs_issued_total 1" in await r.text()


async def test_proxy_keeps_its_config_while_away_and_resyncs(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    rt = FakeRuntime()
    async with running_client(cp, rt) as client:
        await cp.wait(lambda: rt.configs and rt.certs and "reviews-v1.shop" in cp.server.connections
                      and cp.server.connections["reviews-v1.shop"].state.status() == "SYNCED")
        version = client.applied_version
        await cp.stop_discovery()
        await cp.wait(lambda: not client.connected)
        await asyncio.sleep(0.5)  # several reconnect attempts fail meanwhile
        assert client.applied_version == version and len(rt.configs) == 1
        await cp.start_discovery()
        await cp.wait(lambda: client.sessions == 2 and "reviews-v1.shop" in cp.server.connections
                      and cp.server.connections["reviews-v1.shop"].state.status() == "SYNCED")
        # Same content, same version: ACKed again without re-applying; certificate still valid.
        assert len(rt.configs) == 1 and len(rt.certs) == 1


async def test_certificate_that_does_not_install_is_asked_again(control_plane, monkeypatch) -> None:
    import sidecar.discovery

    monkeypatch.setattr(sidecar.discovery, "CSR_RETRY", 0.1)
    cp = control_plane
    rt = FakeRuntime(cert_failures=1)
    async with running_client(cp, rt) as client:
        await cp.wait(lambda: rt.certs)
        assert cp.server.metrics["certs_issued"] == 2 and client.sessions == 1
        assert sorted(p.name for p in client.dir.glob("key*.pem")) == ["key.pem"]  # no stale keys


def test_settings_from_the_environment_name_what_is_missing(tmp_path) -> None:
    from sidecar.discovery import DiscoverySettings

    env = {"REMORA_CONTROL_PLANE": "198.18.0.1:15012", "POD_NAME": "p", "POD_NAMESPACE": "ns",
           "REMORA_TOKEN_FILE": "/t", "REMORA_TRUST_ROOT": "/r", "REMORA_WORKDIR": str(tmp_path)}
    s = DiscoverySettings.from_env(env)
    assert (s.host, s.port, s.service_account, s.trust_domain) == ("198.18.0.1", 15012, "default", "cluster.local")
    with pytest.raises(ValueError, match="REMORA_TOKEN_FILE is not set"):
        DiscoverySettings.from_env({k: v for k, v in env.items() if k != "REMORA_TOKEN_FILE"})
    with pytest.raises(ValueError, match="expected host:port"):
        DiscoverySettings.from_env({**env, "REMORA_CONTROL_PLANE": "host:port"})
