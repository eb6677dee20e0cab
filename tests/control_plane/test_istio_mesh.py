"""Istio traffic resources through real proxies, for what the request path applies today:
header regex and uri matches, first match wins, no match → 404 NR, directResponse, and a
ServiceEntry (STATIC) reached through its address, on HTTP/1.1 and HTTP/2 (prior knowledge);
and a weighted tcp route applied per connection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cp_mesh import CpMesh, service, wait_for
from mesh_harness import APP_UID

pytestmark = pytest.mark.root
VIP, EXT_VIP = "198.19.0.60", "198.19.0.61"


def rules() -> list[dict]:
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "reviews", "namespace": "shop"},
          "spec": {"host": "reviews", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}}
    vs = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "shop"},
          "spec": {"hosts": ["reviews"], "http": [
              {"name": "jason", "match": [{"headers": {"end-user": {"regex": "j.*n"}}}],
               "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
              {"name": "teapot", "match": [{"uri": {"exact": "/teapot"}}],
               "directResponse": {"status": 418, "body": {"string": "short and stout"}}},
              {"name": "api", "match": [{"uri": {"prefix": "/api"}, "method": {"exact": "GET"}}],
               "route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
          ]}}
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "legacy", "namespace": "shop"},
          "spec": {"hosts": ["legacy.example.com"], "addresses": [EXT_VIP], "location": "MESH_EXTERNAL",
                   "resolution": "STATIC", "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                   "endpoints": [{"address": "LEGACY_IP"}]}}
    return [dr, vs, se]


def serve_h2c(mesh: CpMesh, pod, version: str) -> None:
    """nghttpd (HTTP/2 prior knowledge) answering "<version>\n" on the paths the test asks for."""
    www = mesh.tmp / f"www-{version}"
    (www / "api").mkdir(parents=True)
    for path in ("anything", "api/x", "teapot", "other"):
        (www / path).write_text(f"{version}\n")
    for p in (mesh.tmp, www, www / "api", *www.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    mesh.apps.append(pod.spawn(["nghttpd", "--no-tls", "-d", str(www), "9080"], uid=APP_UID, gid=APP_UID,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: pod.exec(["ss", "-Hltn", "sport = :9080"]).stdout.strip(), 10, "nghttpd to listen")


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_matches_404_direct_response_and_service_entry(node, bin_dir, http2: bool) -> None:
    mesh = CpMesh.start(node, bin_dir)
    try:
        port_name = "http2" if http2 else "http"
        mesh.apply("reviews-svc", service("reviews", "shop", VIP, 9080, {"app": "reviews"}, port_name))
        for version in ("v1", "v2"):
            pod = mesh.add_pod(f"reviews-{version}", "shop", "reviews", {"app": "reviews", "version": version})
            if http2:
                serve_h2c(mesh, pod, version)
            else:
                mesh.serve(pod, 9080, version)
        legacy = mesh.add_pod("legacy", "shop", "default", {"app": "legacy"}, meshed=False)
        mesh.serve(legacy, 9080, "legacy")
        objs = rules()
        objs[2]["spec"]["endpoints"][0]["address"] = legacy.ip
        mesh.apply("rules", *objs)
        client = mesh.add_pod("client", "shop", "client", {"app": "client"},
                              hosts={"reviews.shop": VIP, "legacy.example.com": EXT_VIP})
        mesh.wait_synced(["client.shop", "reviews-v1.shop", "reviews-v2.shop"])

        def curl(url: str, *extra: str, h2: bool = http2) -> str:
            proto = ["--http2-prior-knowledge"] if h2 else []
            r = client.exec(["curl", "-s", *proto, "--max-time", "10", "-w", " %{http_code}", *extra, url],
                            uid=APP_UID, timeout=20)
            return r.stdout

        base = "http://reviews.shop:9080"
        assert curl(f"{base}/anything", "-H", "end-user: jason") == "v2\n 200"
        assert curl(f"{base}/api/x", "-H", "end-user: jasonX") == "v1\n 200"  # regex is whole-value
        assert curl(f"{base}/api/x") == "v1\n 200"
        # The body as given (the HTTP/1.1 path still appends a newline to local replies).
        assert curl(f"{base}/teapot").replace("\n", "") == "short and stout 418"
        assert curl(f"{base}/teapot", "-H", "end-user: jon") == "v2\n 200"  # first match wins
        assert curl(f"{base}/api/x", "-X", "POST").endswith(" 404")  # no route matches: 404 (NR)
        assert curl(f"{base}/other").endswith(" 404")
        assert curl("http://legacy.example.com:9080/", h2=False) == "legacy\n 200"  # an HTTP/1.1 server
    finally:
        mesh.close()


TCP_VIP = "198.19.0.62"
COUNT_TCP = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    with socket.create_connection((sys.argv[1], 9000), timeout=5) as s:
        s.sendall(b"hello\\n")
        data = b""
        while not data.endswith(b"\\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    seen[data.decode().strip() or "nothing"] += 1
print(json.dumps(seen))
"""


def test_tcp_traffic_shifting_80_20(node, bin_dir) -> None:
    """The TCP traffic shifting task's 80/20 route (bound to the sidecars), per connection."""
    mesh = CpMesh.start(node, bin_dir)
    try:
        mesh.apply("tcp-echo-svc", service("tcp-echo", "shop", TCP_VIP, 9000, {"app": "tcp-echo"}, "tcp"))
        for version in ("v1", "v2"):
            pod = mesh.add_pod(f"tcp-echo-{version}", "shop", "tcp-echo", {"app": "tcp-echo", "version": version})
            mesh.apps.append(pod.spawn(["socat", "TCP-LISTEN:9000,fork,reuseaddr", f"SYSTEM:read line; echo {version}"],
                                       uid=APP_UID, gid=APP_UID, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
            wait_for(lambda p=pod: p.exec(["ss", "-Hltn", "sport = :9000"]).stdout.strip(), 10, "socat")
        mesh.apply("tcp-echo-rules", {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "tcp-echo-destination", "namespace": "shop"},
            "spec": {"host": "tcp-echo", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]},
        }, {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "tcp-echo", "namespace": "shop"},
            "spec": {"hosts": ["tcp-echo"], "gateways": ["mesh"], "tcp": [{
                "match": [{"port": 9000}],
                "route": [{"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v1"},
                           "weight": 80},
                          {"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v2"},
                           "weight": 20}]}]},
        })
        client = mesh.add_pod("client", "shop", "client", {"app": "client"}, hosts={"tcp-echo.shop": TCP_VIP})
        mesh.wait_synced(["client.shop", "tcp-echo-v1.shop", "tcp-echo-v2.shop"])
        r = client.exec([sys.executable, "-c", COUNT_TCP, TCP_VIP, "200"], uid=APP_UID, timeout=120)
        seen = json.loads(r.stdout or "{}")
        assert set(seen) == {"v1", "v2"} and 20 <= seen["v2"] <= 60, (seen, r.stderr, mesh.logs())
    finally:
        mesh.close()
