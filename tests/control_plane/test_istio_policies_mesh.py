"""Route policies through real meshed pods (control plane, iptables, mTLS between sidecars), on
HTTP/1.1 and HTTP/2: retries observed at the app, fault abort percentage over 200 requests,
mirror copies received, header operations. The full per-feature table runs on loopback in
tests/sidecar/test_traffic_relay.py; this proves the same exchange in the real data path."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest
from cp_mesh import CpMesh, service, wait_for
from mesh_harness import APP_UID

pytestmark = pytest.mark.root
APP = Path(__file__).parent.parent / "sidecar" / "traffic_harness.py"
VIPS = {"http": "198.19.0.70", "http2": "198.19.0.71"}  # one Service per protocol, same pods
HOSTS = {"http": "reviews", "http2": "reviews2"}


def rules(host: str) -> list[dict]:
    dest = {"host": host, "subset": "v1"}
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": host, "namespace": "shop"},
         "spec": {"host": host, "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": host, "namespace": "shop"},
         "spec": {"hosts": [host], "http": [
             {"match": [{"uri": {"prefix": "/retry"}}], "route": [{"destination": dest}],
              "retries": {"attempts": 3, "retryOn": "5xx"}},
             {"match": [{"uri": {"prefix": "/fault"}}], "route": [{"destination": dest}],
              "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 50}}}},
             {"match": [{"uri": {"prefix": "/mirror"}}], "route": [{"destination": dest}],
              "mirror": {"host": host, "subset": "v2"}},
             {"route": [{"destination": dest}],
              "headers": {"request": {"set": {"x-mesh": "set"}}, "response": {"add": {"x-resp": "added"}}}},
         ]}},
    ]


@pytest.fixture
def mesh(node, bin_dir):
    """One mesh for both protocols (the node fixture is per test)."""
    mesh = CpMesh.start(node, bin_dir)
    try:
        for name, vip in VIPS.items():
            mesh.apply(f"{HOSTS[name]}-svc", service(HOSTS[name], "shop", vip, 9080, {"app": "reviews"}, name))
        pods = {}
        for version in ("v1", "v2"):
            pod = mesh.add_pod(f"reviews-{version}", "shop", "reviews", {"app": "reviews", "version": version})
            mesh.apps.append(pod.spawn([sys.executable, str(APP), "serve", "9080", version], uid=APP_UID, gid=APP_UID))
            wait_for(lambda p=pod: p.exec(["ss", "-Hltn", "sport = :9080"]).stdout.strip(), 10, "app to listen")
            pods[version] = pod
        mesh.apply("rules", *rules("reviews"), *rules("reviews2"))
        client = mesh.add_pod("client", "shop", "client", {"app": "client"},
                              hosts={"reviews.shop": VIPS["http"], "reviews2.shop": VIPS["http2"]})
        mesh.wait_synced(["client.shop", "reviews-v1.shop", "reviews-v2.shop"])
        mesh.client, mesh.versions = client, pods  # type: ignore[attr-defined]
        yield mesh
    finally:
        mesh.close()


def curl(mesh, proto: str, path: str, *extra: str, n: int = 1) -> list[tuple[int, str]]:
    host = HOSTS[proto]
    flag = ["--http2-prior-knowledge"] if proto == "http2" else []
    out = []
    for _ in range(n):
        r = mesh.client.exec(["curl", "-s", *flag, "--max-time", "10", "-w", "\n%{http_code}", *extra,
                              f"http://{host}.shop:9080{path}"], uid=APP_UID, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        out.append((int(code), body))
    return out


def app(mesh, version: str, path: str) -> list[dict]:
    """Ask the app in its own pod (loopback, not through the mesh)."""
    r = mesh.versions[version].exec(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:9080{path}"])
    return json.loads(r.stdout) if path == "/_seen" else r.stdout


def test_retries_fault_mirror_and_headers_in_the_mesh(mesh) -> None:
    for proto in ("http", "http2"):
        check(mesh, proto)


def check(mesh, proto: str) -> None:
    app(mesh, "v1", "/_fail/503")
    assert [c for c, _ in curl(mesh, proto, "/retry", "--data-binary", "body")] == [503]
    assert [s["body"] for s in app(mesh, "v1", "/_seen")] == ["body"] * 4  # the try and 3 retries
    app(mesh, "v1", "/_fail/0")

    codes = collections.Counter(c for c, _ in curl(mesh, proto, "/fault", n=200))
    assert set(codes) == {200, 418} and 70 <= codes[418] <= 130, codes

    app(mesh, "v2", "/_fail/0")
    assert [c for c, _ in curl(mesh, proto, "/mirror", n=3)] == [200] * 3
    wait_for(lambda: len(app(mesh, "v2", "/_seen")) == 3, 5, "three mirror copies at v2")
    assert {s["host"] for s in app(mesh, "v2", "/_seen")} == {f"{HOSTS[proto]}.shop-shadow:9080"}
    # In the request's protocol (over mTLS between the sidecars): HTTP/2 copies of HTTP/2 requests.
    assert {s["protocol"] for s in app(mesh, "v2", "/_seen")} == {"HTTP/2" if proto == "http2" else "HTTP/1.1"}

    [(code, out)] = curl(mesh, proto, "/plain", "-i")
    assert code == 200 and "x-resp: added" in out.lower() and '"x-mesh": "set"' in out
