"""ServiceEntry resolution DNS in the proxy: names → endpoints → Router (no root, no network).

The real lookups through a pod's hosts file are in test_traffic_relay.py (``test_service_entry_
resolution_dns*``); here the lookup is a function the test controls.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from typing import Any

import pytest

from control_plane.api.model import Cluster, DnsTarget, Endpoint, ProxyConfig
from remoractl.proxy_status import config_summary
from sidecar import dnsresolve
from sidecar.dnsresolve import DnsResolver, Resolution, endpoints_of, overlay, preferred
from sidecar.routing import RequestInfo, Router
from sidecar.settings import SettingsError, load

INTERNAL = "spiffe://cluster.local/ns/app/sa/vm"


def config(policy: dict[str, Any] | None = None) -> ProxyConfig:
    return ProxyConfig.from_dict({
        "clusters": [
            {"name": "ext|80", "service": "ext", "port": 80, "protocol": "http", "policy": policy or {},
             "dns": [{"hostname": "a.example", "port": 8080, "weight": 1},
                     {"hostname": "b.example", "port": 9090, "weight": 3, "identity": INTERNAL}]},
            {"name": "static|80", "service": "static", "port": 80, "protocol": "http",
             "endpoints": [{"address": "198.18.0.9", "port": 80}]}],
        "outbound": [{"service": "ext", "addresses": ["198.19.0.5"], "port": 80, "protocol": "http",
                      "default_cluster": "ext|80"}]})


def test_every_address_of_every_target_is_an_endpoint_with_the_targets_port_weight_and_identity() -> None:
    cluster = config().clusters[0]
    resolved = {"a.example": Resolution(("198.18.0.1", "198.18.0.2")), "b.example": Resolution(("198.18.0.3",))}
    assert endpoints_of(cluster, resolved) == (
        Endpoint("198.18.0.1", 8080, None, {}, 1), Endpoint("198.18.0.2", 8080, None, {}, 1),
        Endpoint("198.18.0.3", 9090, INTERNAL, {}, 3))
    # A name not resolved yet adds nothing; the same address and port twice is one endpoint.
    twice = Cluster("t|80", "t", 80, dns=(DnsTarget("a.example", 80), DnsTarget("c.example", 80)))
    assert endpoints_of(twice, {"a.example": Resolution(("198.18.0.1",)), "c.example": Resolution(("198.18.0.1",))}) \
        == (Endpoint("198.18.0.1", 80),)
    assert endpoints_of(cluster, {}) == ()


def test_overlay_fills_only_dns_clusters_and_leaves_a_config_without_them_as_it_is() -> None:
    cfg = config()
    out = overlay(cfg, {"a.example": Resolution(("198.18.0.1",))})
    assert [e.address for e in out.clusters[0].endpoints] == ["198.18.0.1"]
    assert out.clusters[1] is cfg.clusters[1] and out.outbound == cfg.outbound
    plain = ProxyConfig(clusters=(cfg.clusters[1],))
    assert overlay(plain, {}) is plain


def test_ipv4_is_preferred_and_addresses_are_sorted_once() -> None:
    v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.18.0.2", 0))
    v4b = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.18.0.1", 0))
    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1%2", 0, 0, 0))
    assert preferred([v6, v4, v4b, v4]) == ("198.18.0.1", "198.18.0.2")
    assert preferred([v6]) == ("fd00::1",)


class FakeDns:
    """A lookup answering from a table; a missing name fails as getaddrinfo does."""

    def __init__(self, table: dict[str, tuple[str, ...]]) -> None:
        self.table = table
        self.calls: collections.Counter[str] = collections.Counter()
        self.block: asyncio.Event | None = None

    async def __call__(self, name: str) -> tuple[str, ...]:
        self.calls[name] += 1
        if self.block is not None:
            await self.block.wait()
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[name]


def test_a_change_is_reported_and_a_failure_keeps_the_last_good_addresses() -> None:
    async def run() -> None:
        fake = FakeDns({"a.example": ("198.18.0.2", "198.18.0.1")})
        changes: list[int] = []
        r = DnsResolver(lambda: changes.append(1), lookup=fake)
        r.set_names(dnsresolve.names_of(config()))
        assert await r.refresh() is True  # a.example resolved; b.example failed
        assert r.resolved["a.example"].addresses == ("198.18.0.1", "198.18.0.2")
        assert r.resolved["b.example"] == Resolution((), "Name or service not known", None)
        assert await r.refresh() is False  # the same answer is no change
        del fake.table["a.example"]
        assert await r.refresh() is False
        kept = r.resolved["a.example"]
        assert kept.addresses == ("198.18.0.1", "198.18.0.2") and kept.error == "Name or service not known"
        fake.table["a.example"] = ("198.18.0.7",)
        assert await r.refresh() is True and r.resolved["a.example"].error == ""
        text = r.render_prometheus()
        assert 'remora_dns_resolutions_total{host="a.example",result="success"} 3' in text
        assert 'remora_dns_resolutions_total{host="a.example",result="failure"} 1' in text
        assert 'remora_dns_resolutions_total{host="b.example",result="failure"} 4' in text
        assert r.dump()["a.example"]["addresses"] == ["198.18.0.7"]
        r.set_names(frozenset({"b.example"}))  # a new config without a.example forgets it
        assert set(r.resolved) == {"b.example"}

    asyncio.run(run())


def test_a_slow_lookup_times_out_and_is_not_started_again_while_it_runs() -> None:
    async def run() -> None:
        fake = FakeDns({"a.example": ("198.18.0.1",)})
        fake.block = asyncio.Event()
        r = DnsResolver(lambda: None, lookup=fake, timeout=0.01)
        r.set_names(frozenset({"a.example"}))
        assert await r.refresh() is False
        assert r.resolved["a.example"].error == "no answer within 0.01s"
        await r.refresh()  # still running: not asked again, nothing counted
        assert fake.calls["a.example"] == 1 and r.counts == {("a.example", "failure"): 1}
        fake.block.set()
        await asyncio.sleep(0)
        fake.block = None
        assert await r.refresh() is True and fake.calls["a.example"] == 2

    asyncio.run(run())


def test_the_loop_resolves_new_names_at_once_then_every_refresh_period() -> None:
    async def run() -> None:
        fake = FakeDns({"a.example": ("198.18.0.1",)})
        changed = asyncio.Event()
        r = DnsResolver(changed.set, refresh_rate=30.0, lookup=fake)
        r.start()
        try:
            await asyncio.sleep(0.01)
            r.set_names(frozenset({"a.example"}))  # a config push wakes the loop before the period
            await asyncio.wait_for(changed.wait(), 2)
        finally:
            r.close()
        fast = DnsResolver(lambda: None, refresh_rate=0.01, lookup=fake)
        fast.set_names(frozenset({"a.example"}))
        fast.start()
        await asyncio.sleep(0.2)
        fast.close()
        assert fake.calls["a.example"] >= 5

    asyncio.run(run())


def test_a_name_stuck_in_its_lookup_delays_neither_the_others_nor_the_exit(monkeypatch) -> None:
    """Real lookups (getaddrinfo_lookup, libc): one name hangs as with an unreachable nameserver."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kw: Any) -> Any:
        if host == "stuck.example":
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1" if host == "fast.example" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def run() -> DnsResolver:
        r = DnsResolver(lambda: None, refresh_rate=0.02, timeout=0.1)
        r.set_names(frozenset({"stuck.example", "fast.example"}))
        r.start()
        await asyncio.sleep(0.4)
        r.close()
        return r

    started = time.monotonic()
    try:
        r = asyncio.run(run())  # the loop closes although a lookup thread still hangs
        assert time.monotonic() - started < 2
    finally:
        release.set()
    assert r.resolved["fast.example"].addresses == ("127.0.0.1",)
    assert r.counts[("fast.example", "success")] >= 5  # refreshed all along
    assert r.counts[("stuck.example", "failure")] == 1  # timed out once, then never asked again meanwhile
    assert r.resolved["stuck.example"].error == "no answer within 0.1s"


def test_the_router_balances_over_resolved_endpoints_and_keeps_outlier_state() -> None:
    policy = {"load_balancer": {"simple": "ROUND_ROBIN"},
              "outlier": {"consecutive_5xx": 1, "max_ejection_percent": 100.0}}
    cfg = config(policy)
    empty = Router(overlay(cfg, {}), clock=lambda: 0.0)
    d = empty.decide(empty.lookup("198.19.0.5", 80), RequestInfo("GET", "/"))
    assert (d.status, d.flag) == (503, "UH")  # nothing resolved yet
    resolved = {"a.example": Resolution(("198.18.0.1", "198.18.0.2"))}
    r = Router(overlay(cfg, resolved), empty, clock=lambda: 0.0)
    port = r.lookup("198.19.0.5", 80)
    picks = [r.decide(port, RequestInfo("GET", "/")).endpoint.address for _ in range(4)]
    assert sorted(picks) == ["198.18.0.1", "198.18.0.1", "198.18.0.2", "198.18.0.2"]
    r.outliers["ext|80"].report(("198.18.0.1", 8080), 503, 0.0, 2)
    again = Router(overlay(cfg, {**resolved, "b.example": Resolution(("198.18.0.3",))}), r, clock=lambda: 0.0)
    assert again.outliers["ext|80"] is r.outliers["ext|80"]  # the ejection survives a re-resolution
    port = again.lookup("198.19.0.5", 80)
    assert "198.18.0.1" not in {again.decide(port, RequestInfo("GET", "/")).endpoint.address for _ in range(20)}


@pytest.mark.parametrize(("value", "ok"), [("0.2", True), ("0", False), ("soon", False)])
def test_refresh_rate_setting(value: str, ok: bool) -> None:
    env = {"REMORA_DNS_REFRESH_RATE": value, "REMORA_CONTROL_PLANE": "cp:15012"}
    if ok:
        assert load(env, object()).dns_refresh_rate == 0.2  # type: ignore[arg-type]
    else:
        with pytest.raises(SettingsError, match="(?i)dns.refresh.rate"):
            load(env, object())  # type: ignore[arg-type]


def test_proxy_config_names_the_targets_the_proxy_resolves() -> None:
    body = {"proxy_id": "p.app", "identity": "spiffe://x", "status": "SYNCED", "acked_version": "v1",
            "sent_version": "v1", "config": {**config().to_dict(), "unsupported": []}}
    out = config_summary(body)
    assert "ext|80: resolved by the proxy: a.example:8080 (plaintext), b.example:9090" in out
    assert "static|80: 198.18.0.9:80 (plaintext)" in out
