"""VirtualService weights between DestinationRule subsets, applied per request by real proxies;
a weight change takes effect without restarts; an invalid snapshot is NACKed and the proxy
keeps serving its last good version."""

from __future__ import annotations

import json

import pytest
from cp_mesh import CpMesh, service, wait_for

pytestmark = pytest.mark.root
VIP = "198.19.0.20"
URL = "http://reviews.shop:9080/"
N = 1000


def subsets(*subset_names: str) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": s, "labels": {"version": s}}
                                                   for s in subset_names]}}


def split(v1: int, v2: int) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"name": "split", "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2}]}]}}


def share_of_v1(mesh: CpMesh, client) -> float:
    r = mesh.run_app(client, "count", URL, str(N))
    got = json.loads(r.stdout)
    assert got["failed"] == 0 and set(got["bodies"]) <= {"v1", "v2"}, (got, mesh.logs())
    return got["bodies"].get("v1", 0) / N


def test_weighted_split_follows_the_virtual_service(node, bin_dir) -> None:
    mesh = CpMesh.start(node, bin_dir)
    try:
        mesh.apply("reviews", service("reviews", "shop", VIP, 9080, {"app": "reviews"}),
                   subsets("v1", "v2"), split(80, 20))
        for version in ("v1", "v2"):
            pod = mesh.add_pod(f"reviews-{version}", "shop", "reviews",
                               {"app": "reviews", "version": version})
            mesh.serve(pod, 9080, version)
        client = mesh.add_pod("client", "shop", "client", {"app": "client"},
                              hosts={"reviews.shop": VIP})
        ids = ["client.shop", "reviews-v1.shop", "reviews-v2.shop"]
        mesh.wait_synced(ids)
        # 1,000 requests on one keep-alive connection: the split is made per request.
        assert abs(share_of_v1(mesh, client) - 0.80) < 0.05

        pids = {n: h.proc.pid for n, h in mesh.proxies.items()}
        before = mesh.proxy_status()["client.shop"]["acked_version"]
        mesh.apply("reviews", service("reviews", "shop", VIP, 9080, {"app": "reviews"}),
                   subsets("v1", "v2"), split(20, 80))
        mesh.wait_new_version("client.shop", before)
        status = mesh.wait_synced(ids)
        assert abs(share_of_v1(mesh, client) - 0.20) < 0.05
        assert {n: h.proc.pid for n, h in mesh.proxies.items()} == pids
        assert all(h.proc.poll() is None for h in mesh.proxies.values())

        # Two services claiming one VIP:port: the proxies' strict decoder rejects the snapshot.
        good = status["client.shop"]["acked_version"]
        mesh.apply("clash", service("clash", "shop", VIP, 9080, {"app": "nothing"}))

        def errored():
            st = mesh.proxy_status().get("client.shop", {})
            return st if st.get("status") == "ERROR" else None

        st = wait_for(errored, 15, "client.shop to NACK", interval=0.3)
        assert f"{VIP}:9080 is claimed by two services" in st["last_error"]
        assert st["acked_version"] == good
        table = mesh.remoractl("proxy-status").stdout
        assert "ERROR" in table and "claimed by two services" in table
        assert abs(share_of_v1(mesh, client) - 0.20) < 0.05  # still the last good snapshot
        mesh.remove("clash")
        mesh.wait_synced(ids)
    finally:
        mesh.close()
