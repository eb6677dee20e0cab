"""The DNS proxy for real: remora-init's port-53 capture, the proxy on :15053, real clients.

A meshed client pod whose resolv.conf (Kubernetes' search domains) names a fake upstream
resolver in a third, unmeshed pod. The client's hosts file holds only the short names the
harness writes, so every other form of a name is resolved through DNS, i.e. by the proxy:
dig, getent (glibc), Python's getaddrinfo, curl and grpcio (c-ares) all get the service's VIP
and reach it through the mesh; a name outside the mesh is forwarded to the pod's resolver.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_harness import APP_UID, APPS, Mesh, Service

from local_cluster import netns

pytestmark = pytest.mark.root
DNS_APPS = str(Path(__file__).resolve().parents[1] / "fake_resolver.py")
CLIENTS = str(Path(__file__).resolve().parents[1] / "dns_apps.py")
UPSTREAM_ANSWER = "198.18.250.2"  # what the fake upstream resolver says for every A query
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(netns.new_prefix("dns"))
    try:
        client, server, upstream = (node.add_pod(n) for n in ("client", "server", "upstream"))
        # Before the proxy starts: it reads its upstream resolvers once, from this file.
        etc = netns.NETNS_ETC / client.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            f"search {SEARCH}\nnameserver {upstream.ip}\noptions ndots:5 timeout:2 attempts:1\n")
        resolver = upstream.spawn([sys.executable, DNS_APPS, "53", UPSTREAM_ANSWER],
                                  stdout=subprocess.PIPE)
        assert resolver.stdout is not None and resolver.stdout.readline().strip() == b"ready"
        m = Mesh.start(node, Path(sys.executable).parent,
                       [Service("web", 8080), Service("grpc", 50051, protocol="grpc")],
                       pods=(client, server))
        try:
            m.apps.append(resolver)
            m.spawn_app([sys.executable, APPS, "http", "8080"])
            grpc_server = m.spawn_app([sys.executable, CLIENTS, "grpc-serve", "50051"],
                                      stdout=subprocess.PIPE)
            assert grpc_server.stdout is not None
            assert grpc_server.stdout.readline().strip() == b"ready"
            m.wait_port(m.server, 8080)
            yield m
        finally:
            m.close()
    finally:
        node.destroy()


def run(m: Mesh, *argv: str) -> str:
    r = m.client.exec(list(argv), uid=APP_UID, gid=APP_UID, timeout=30)
    assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}{m.logs()}"
    return r.stdout.strip()


def dns_count(m: Mesh, result: str) -> int:
    text = m.proxies["client"].metrics()
    return sum(int(v) for v in re.findall(
        rf'remora_dns_requests_total{{result="{result}",protocol="\w+"}} (\d+)', text))


def vip(m: Mesh, name: str) -> str:
    return next(s.vip for s in m.services if s.name == name)


@pytest.mark.parametrize("name", ["web.default", "web.default.svc",
                                  "web.default.svc.cluster.local"])
def test_every_resolver_gets_the_vip_from_the_proxy(mesh: Mesh, name: str) -> None:
    before = dns_count(mesh, "local")
    want = vip(mesh, "web")
    assert run(mesh, "dig", "+short", "+search", name) == want
    assert run(mesh, "dig", "+short", "+search", "+tcp", name) == want
    assert run(mesh, "getent", "hosts", name).split()[0] == want
    assert run(mesh, sys.executable, CLIENTS, "getaddrinfo", name) == want
    assert run(mesh, "curl", "-s", "-m", "5", f"http://{name}:8080/").startswith("hello")
    assert dns_count(mesh, "local") - before >= 5  # the proxy answered them itself


def test_grpcio_calls_a_service_by_name(mesh: Mesh) -> None:
    # c-ares reads no hosts file: the short name resolves only through the search domains.
    before = dns_count(mesh, "local")
    assert run(mesh, sys.executable, CLIENTS, "grpc-check", "grpc:50051") == "SERVING"
    assert run(mesh, sys.executable, CLIENTS, "grpc-check",
               "grpc.default.svc.cluster.local:50051") == "SERVING"
    assert dns_count(mesh, "local") - before >= 2


def test_names_outside_the_mesh_go_to_the_pods_resolver(mesh: Mesh) -> None:
    before = dns_count(mesh, "forwarded")
    assert run(mesh, "dig", "+short", "www.example.test") == UPSTREAM_ANSWER
    assert run(mesh, "dig", "+short", "+tcp", "www.example.test") == UPSTREAM_ANSWER
    assert run(mesh, "getent", "hosts", "api.example.test").split()[0] == UPSTREAM_ANSWER
    assert dns_count(mesh, "forwarded") - before >= 3


def test_aaaa_of_a_mesh_name_is_an_empty_answer_not_an_error(mesh: Mesh) -> None:
    out = run(mesh, "dig", "+noall", "+comments", "AAAA", "web.default.svc.cluster.local")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and " aa" in out
