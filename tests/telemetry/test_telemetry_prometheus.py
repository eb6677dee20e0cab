"""``remoractl stat`` and ``remoractl dashboard`` reading a real Prometheus (Debian's) that
scrapes two real proxies (real control plane, mTLS), as on Kubernetes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cp_mesh import CONTROL_IP, MONITORING_URL, service, wait_for
from telemetry_kit import cp_mesh_on

from local_cluster import netns

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="Debian's prometheus is not installed")]
REMORACTL = str(Path(sys.executable).parent / "remoractl")
NS, VIP = "demo", "198.19.0.51"
PROM = f"http://{CONTROL_IP}:9090"


@pytest.fixture(scope="module")
def mesh(module_node):
    with cp_mesh_on(module_node) as m:
        m.apply("svc", service("web", NS, VIP, 8080, {"app": "web"}))
        server = m.add_pod("server", NS, "server", {"app": "web"})
        client = m.add_pod("client", NS, "client", {"app": "client"}, hosts={f"web.{NS}": VIP})
        m.serve(server, 8080, "web")
        m.wait_synced(["client.demo", "server.demo"])
        cfg = m.tmp / "prometheus.yml"
        cfg.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "remora-proxies", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [f"{server.ip}:15090",
                                                                f"{client.ip}:15090"]}]}]}))
        m.apps.append(netns.spawn_in(module_node.netns, [
            "prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={m.tmp / 'tsdb'}",
            f"--web.listen-address={CONTROL_IP}:9090"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        wait_for(lambda: in_node(m, ["curl", "-sf", f"{PROM}/-/ready"]).returncode == 0, 20,
                 "Prometheus to be ready")
        m.spawn_app(client, "load", f"http://web.{NS}:8080/", "60", str(m.tmp / "load.json"))

        def scraped_traffic() -> bool:  # an increase needs two scrapes of the series
            query = 'increase(istio_requests_total{reporter="destination"}[5s]) > 0'
            q = in_node(m, ["curl", "-s", "-G", f"{PROM}/api/v1/query", "--data-urlencode",
                            f"query={query}"])
            return '"reporter":"destination"' in q.stdout
        wait_for(scraped_traffic, 20, "Prometheus to have scraped requests twice", interval=0.5)
        yield m


def in_node(m, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return netns.exec_in(m.node.netns, argv, timeout=timeout)


def test_stat_from_prometheus(mesh) -> None:
    r = in_node(mesh, [REMORACTL, "stat", "--prometheus", PROM, "-n", NS, "--window", "10",
                       "-o", "json"])
    assert r.returncode == 0, r.stderr
    got = {w["workload"]: w for w in json.loads(r.stdout)["workloads"]}
    web = got["server.demo"]
    assert web["rps"] > 1 and web["success"] == 1.0 and web["p50_ms"] > 0, got
    assert web["pods"] is None  # Prometheus does not say how many pods are meshed
    table = in_node(mesh, [REMORACTL, "stat", "--prometheus", PROM, "--window", "5"])
    assert re.search(r"^server\.demo\s+-\s+100\.00%", table.stdout, re.M), table.stdout


def test_dashboard_from_prometheus_and_the_control_plane(mesh) -> None:
    proc = netns.spawn_in(mesh.node.netns, [
        REMORACTL, "dashboard", "--prometheus", PROM, "--control-plane-url", MONITORING_URL,
        "--address", CONTROL_IP, "--port", "0", "--interval", "1", "--window", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = re.search(r"http://\S+/", proc.stdout.readline().decode())
        assert url, "no URL printed"

        def graph() -> dict | None:
            r = in_node(mesh, ["curl", "-sf", url.group(0) + "api/graph"])
            data = json.loads(r.stdout) if r.returncode == 0 else {}
            return data if data.get("edges") and data.get("proxies") else None

        data = wait_for(graph, 15, "the dashboard's first graph")
        (edge,) = [e for e in data["edges"] if (e["source"], e["destination"]) ==
                   ("client.demo", "server.demo")]
        assert edge["rps"] > 1 and edge["success"] == 1.0 and edge["mtls"] == 1.0, edge
        assert {p["proxy_id"]: p["status"] for p in data["proxies"]} == {
            "client.demo": "SYNCED", "server.demo": "SYNCED"}
        assert data["source"] == f"Prometheus {PROM}"
    finally:
        netns.stop_process(proc, timeout=5)
