"""Pure logic of the proxy core: routing, protocol detection, ClientHello ALPN, counters,
settings and the runtime's config/certificate hooks (no namespaces needed)."""

from __future__ import annotations

import collections
import json
import random
import ssl
import subprocess

import pytest

from control_plane.api.model import ConfigError, ProxyConfig
from control_plane.ca import CertificateAuthority
from sidecar import detect
from sidecar.routing import NO_HEALTHY_UPSTREAM, Router
from sidecar.settings import Settings, SettingsError, load, load_bootstrap
from sidecar.stats import Stats
from sidecar.tls import client_hello_alpns

CLUSTERS = [
    {"name": "r|80", "service": "r", "port": 80, "protocol": "http",
     "endpoints": [{"address": "198.18.0.20", "port": 8080, "weight": 3},
                   {"address": "198.18.0.21", "port": 8080, "weight": 1}]},
    {"name": "r|80|v2", "service": "r", "port": 80, "protocol": "http",
     "endpoints": [{"address": "198.18.0.22", "port": 8080}]},
    {"name": "empty|80", "service": "empty", "port": 80, "endpoints": []},
]
CONFIG = {
    "clusters": CLUSTERS,
    "outbound": [
        {"service": "r", "addresses": ["198.19.0.5"], "port": 80, "protocol": "http",
         "default_cluster": "r|80",
         "routes": [
             {"name": "v2-header", "matches": [{"headers": {"x-version": {"exact": "v2"}}}],
              "destinations": [{"cluster": "r|80|v2"}], "timeout": 1.5},
             {"name": "api", "matches": [{"uri": {"prefix": "/api/"}, "method": {"exact": "POST"}},
                                         {"uri": {"exact": "/exact"}}],
              "destinations": [{"cluster": "r|80", "weight": 50}, {"cluster": "r|80|v2", "weight": 50}]},
         ]},
        {"service": "empty", "addresses": ["198.19.0.6"], "port": 80, "protocol": "http",
         "default_cluster": "empty|80"},
    ],
}


@pytest.fixture
def router() -> Router:
    return Router(ProxyConfig.from_dict(CONFIG))


def test_route_matching_and_timeouts(router):
    port = router.lookup("198.19.0.5", 80)
    assert router.lookup("198.19.0.5", 81) is None
    d = router.resolve(port, b"GET", b"/x", [(b"X-Version", b"v2")])
    assert (d.route, d.endpoint.address, d.timeout) == ("v2-header", "198.18.0.22", 1.5)
    assert router.resolve(port, b"POST", b"/api/a?q=1", []).route == "api"
    assert router.resolve(port, b"GET", b"/api/a", []).route == "default"  # method must match
    assert router.resolve(port, b"GET", b"/exact?x", []).route == "api"
    assert router.resolve(port, b"GET", b"/exactly", []).route == "default"


def test_weighted_clusters_and_round_robin(router):
    random.seed(7)
    port = router.lookup("198.19.0.5", 80)
    picks = collections.Counter(router.resolve(port, b"POST", b"/api/", []).cluster.name
                                for _ in range(2000))
    assert 850 < picks["r|80"] < 1150 and 850 < picks["r|80|v2"] < 1150
    rr = collections.Counter(router.pick("r|80").endpoint.address for _ in range(400))
    assert rr == {"198.18.0.20": 300, "198.18.0.21": 100}  # weights 3:1, exactly


def test_no_endpoint_is_503_no_healthy_upstream(router):
    d = router.resolve(router.lookup("198.19.0.6", 80), b"GET", b"/", [])
    assert (d.status, d.message) == (503, NO_HEALTHY_UPSTREAM)


def test_fixed_ports_are_only_those_that_route_every_request_alike(router):
    """A connection may reuse its first routing decision only on these ports."""
    one = {"service": "one", "addresses": ["198.19.0.7"], "port": 80, "protocol": "http",
           "default_cluster": "r|80|v2"}
    fixed = Router(ProxyConfig.from_dict({"clusters": CLUSTERS, "outbound": [
        one,
        {**one, "service": "routed", "addresses": ["198.19.0.8"],
         "routes": [{"name": "all", "destinations": [{"cluster": "r|80|v2"}], "timeout": 2.0}]},
        {**one, "service": "two", "addresses": ["198.19.0.9"], "default_cluster": "r|80"},
    ]}))
    assert fixed.is_fixed(fixed.lookup("198.19.0.7", 80))
    assert fixed.is_fixed(fixed.lookup("198.19.0.8", 80))  # a match-all route, one endpoint
    assert not fixed.is_fixed(fixed.lookup("198.19.0.9", 80))  # two endpoints: round robin
    assert not fixed.is_fixed(None)
    assert not router.is_fixed(router.lookup("198.19.0.5", 80))  # routes match on the request
    assert not router.is_fixed(router.lookup("198.19.0.6", 80))  # no endpoint: answered 503


@pytest.mark.parametrize("data,http_only,kind", [
    (b"GET / HTTP/1.1\r\n", False, "h1"), (b"GE", False, None), (b"DELETE /x", False, "h1"),
    (detect.H2_PREFACE, False, "h2"), (detect.H2_PREFACE[:10], True, None),
    (b"\x16\x03\x01\x00", False, "tls"), (b"\x16", False, None),
    (b"*1\r\n$4\r\nPING\r\n", False, "opaque"), (b"\x00garbage", True, "h1"), (b"", False, None),
])
def test_classify(data, http_only, kind):
    assert detect.classify(data, http_only) == kind


def _client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_client_hello_alpn():
    hello = _client_hello(["remora-h1"])
    assert client_hello_alpns(hello) == [b"remora-h1"]
    assert client_hello_alpns(_client_hello(["h2", "http/1.1"])) == [b"h2", b"http/1.1"]
    assert client_hello_alpns(_client_hello(None)) == []
    assert client_hello_alpns(hello[:40]) is None  # incomplete: wait for more
    assert client_hello_alpns(b"GET / HTTP/1.1") is None


def test_prometheus_rendering():
    s = Stats()
    s.request_done("outbound", "r", 200, 0.003, "spiffe://cluster.local/ns/a/sa/b")
    s.request_done("outbound", "r", 200, 7.0, None)
    s.connect_error("identity_mismatch")
    text = s.render_prometheus()
    assert ('remora_requests_total{direction="outbound",service="r",response_code="200",'
            'peer_identity="spiffe://cluster.local/ns/a/sa/b"} 1') in text
    assert 'remora_request_duration_seconds_bucket{direction="outbound",service="r",le="0.005"} 1' in text
    assert 'remora_request_duration_seconds_bucket{direction="outbound",service="r",le="+Inf"} 2' in text
    assert 'remora_upstream_connect_errors_total{reason="identity_mismatch"} 1' in text


class _Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getattr__(self, name):
        return None


def test_settings_errors_name_the_bad_value():
    with pytest.raises(SettingsError, match="no configuration source"):
        load({}, _Args())
    with pytest.raises(SettingsError, match="REMORA_DRAIN_SECONDS: invalid value 'soon'"):
        load({"REMORA_BOOTSTRAP": "b.json", "REMORA_DRAIN_SECONDS": "soon"}, _Args())
    with pytest.raises(SettingsError, match="--log-level: invalid value 'loud'"):
        load({"REMORA_BOOTSTRAP": "b.json"}, _Args(log_level="loud"))
    with pytest.raises(SettingsError, match="REMORA_OPAQUE_PORTS"):
        load({"REMORA_BOOTSTRAP": "b.json", "REMORA_OPAQUE_PORTS": "3306,99999"}, _Args())
    s = load({"REMORA_BOOTSTRAP": "b.json", "REMORA_OPAQUE_PORTS": "3306,25"},
             _Args(drain_seconds="2.5", admin_port="16000"))
    assert (s.opaque_ports, s.drain_seconds, s.admin_port) == ((3306, 25), 2.5, 16000)


def test_bootstrap_errors(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"config": {"clusters": [{"name": 1}]}, "tls": {}}))
    with pytest.raises(SettingsError, match=r"config.clusters\[0\].name"):
        load_bootstrap(str(p))
    p.write_text(json.dumps({"config": {}, "tls": {"key": "k"}}))
    with pytest.raises(SettingsError, match="tls.cert_chain is required"):
        load_bootstrap(str(p))


def test_runtime_hooks(tmp_path):
    from sidecar.runtime import ProxyRuntime

    rt = ProxyRuntime(Settings(workdir=str(tmp_path), bootstrap="x"))
    with pytest.raises(ConfigError, match="15001"):
        rt.apply_config(ProxyConfig.from_dict({
            "clusters": [{"name": "c", "service": "c", "port": 1}],
            "outbound": [{"service": "c", "addresses": ["198.19.0.1"], "port": 15001,
                          "protocol": "tcp", "default_cluster": "c"}]}))
    assert rt.config is None and not rt.ready
    ca = CertificateAuthority.generate()
    key, chain = ca.issue("spiffe://cluster.local/ns/default/sa/web")
    rt.apply_certificate(key, chain, ca.root_pem)
    first = rt.tls
    assert rt.identity == "spiffe://cluster.local/ns/default/sa/web"
    key2, chain2 = ca.issue("spiffe://cluster.local/ns/default/sa/web")
    rt.apply_certificate(key2, chain2, ca.root_pem)
    assert rt.tls is not first  # new contexts; open connections keep the old ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert-chain-2.pem", "key-2.pem", "roots-2.pem"]
    assert (tmp_path / "key-2.pem").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="certificate"):
        rt.apply_certificate(b"junk", b"junk", ca.root_pem)
    assert rt.tls.identity == "spiffe://cluster.local/ns/default/sa/web"  # kept the good one


def test_cli_errors_are_one_line(tmp_path, bin_dir):
    proxy = str(bin_dir / "remora-proxy")
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([proxy], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "no configuration source" in r.stderr
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"config": {"outbound": [{"service": "x"}]}, "tls": {}}))
    r = subprocess.run([proxy, "--bootstrap", str(bad)], env=env, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"remora-proxy: bootstrap {bad}: config.outbound[0].addresses: required"]
    r = subprocess.run([proxy, "wait", "--timeout", "0.3", "--health-port", "1"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "not ready after 0.3s" in r.stderr
