"""Name resolution in local-cluster pods, meshed and unmeshed, with real clients.

Each pod's resolv.conf carries Kubernetes' search domains and the node's cluster DNS; a meshed
pod's queries are captured by remora-init and answered by its proxy (counted in its metrics),
an unmeshed pod asks the node's resolver directly. grpcio (c-ares: DNS only), dig, getent,
Python's getaddrinfo and curl, by short and full names.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lc_kit import LocalCluster, local_cluster

pytestmark = pytest.mark.root
NS = "dnsns"
CLIENTS = str(Path(__file__).resolve().parents[1] / "dns_apps.py")
PY = str(Path(sys.executable).parent / "python")

APPS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{remora.dev/inject: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {NS}}}
spec:
  selector: {{app: grpc}}
  ports: [{{name: grpc, port: 50051}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: grpc, namespace: {NS}, labels: {{app: grpc}}}}
spec:
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: app
    command: [{PY}, {CLIENTS}, grpc-serve, "50051"]
    ports: [{{name: grpc, containerPort: 50051}}]
    readinessProbe: {{tcpSocket: {{port: 50051}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {NS}, labels: {{app: web}}}}
spec:
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: app
    command: [{PY}, -m, http.server, "8000"]
    ports: [{{name: http, containerPort: 8000}}]
    readinessProbe: {{httpGet: {{path: /, port: 8000}}, periodSeconds: 1}}
"""
# Clients that only sleep (commands run in them with `remoractl local exec`): meshed, meshed
# with DNS capture off, and unmeshed.
for name, meta in (("meshed", ""), ("nodns", ', annotations: {remora.dev/dns-capture: "false"}'),
                   ("plain", ', labels: {remora.dev/inject: "false"}')):
    APPS += f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}{meta}}}
spec:
  securityContext: {{runAsUser: 1000}}
  containers: [{{name: main, command: [sleep, infinity]}}]
"""


def _ready(p: dict) -> bool:
    return p["phase"] == "Running" and p["ready"].split("/")[0] == p["ready"].split("/")[1]


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("dns") / "state") as cluster:
        cluster.apply(APPS)
        for pod in ("grpc", "web", "meshed", "nodns", "plain"):
            cluster.wait_pod(NS, pod, _ready, timeout=90)
        yield cluster


def run(lc: LocalCluster, pod: str, *argv: str) -> str:
    deadline = time.monotonic() + 10  # VIP DNAT and endpoints follow readiness after a debounce
    while True:
        res = lc.ctl("exec", "-n", NS, pod, "--", *argv)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert res.returncode == 0, f"{pod}: {argv}: {res.stdout}{res.stderr}"
    return res.stdout.strip()


def vip(lc: LocalCluster, name: str) -> str:
    return next(s["clusterIP"] for s in lc.status()["services"]
                if (s["namespace"], s["name"]) == (NS, name))


def proxy_dns(lc: LocalCluster, result: str) -> int:
    text = run(lc, "meshed", "curl", "-s", "http://127.0.0.1:15090/metrics")
    return sum(int(v) for v in re.findall(
        rf'remora_dns_requests_total{{result="{result}",protocol="\w+"}} (\d+)', text))


def test_resolv_conf_has_kubernetes_search_domains(lc: LocalCluster) -> None:
    for pod in ("meshed", "plain"):
        conf = run(lc, pod, "cat", "/etc/resolv.conf")
        assert f"search {NS}.svc.cluster.local svc.cluster.local cluster.local" in conf
        assert "nameserver 198.18.0.1" in conf


@pytest.mark.parametrize("pod", ["meshed", "plain"])
def test_grpcio_calls_a_service_by_name(lc: LocalCluster, pod: str) -> None:
    assert run(lc, pod, PY, CLIENTS, "grpc-check", "grpc:50051") == "SERVING"
    assert run(lc, pod, PY, CLIENTS, "grpc-check",
               f"grpc.{NS}.svc.cluster.local:50051") == "SERVING"


@pytest.mark.parametrize("pod", ["meshed", "plain"])
@pytest.mark.parametrize("name", ["web", f"web.{NS}", f"web.{NS}.svc.cluster.local"])
def test_dig_getent_getaddrinfo_and_curl_by_short_and_full_names(lc: LocalCluster, pod: str,
                                                                 name: str) -> None:
    want = vip(lc, "web")
    assert run(lc, pod, "dig", "+short", "+search", name) == want
    assert run(lc, pod, "getent", "hosts", name).split()[0] == want
    assert run(lc, pod, PY, CLIENTS, "getaddrinfo", name) == want
    assert run(lc, pod, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{name}/") == "200"


def test_the_meshed_pods_proxy_answers_and_forwards(lc: LocalCluster) -> None:
    local, forwarded = proxy_dns(lc, "local"), proxy_dns(lc, "forwarded")
    assert run(lc, "meshed", "dig", "+short", f"grpc.{NS}.svc.cluster.local") == vip(lc, "grpc")
    assert proxy_dns(lc, "local") > local
    # Not a mesh name: forwarded to the pod's resolver (the node's), whose NXDOMAIN comes back
    # at once, not after a time-out.
    out = run(lc, "meshed", "dig", "+tries=1", "+time=3", "nothing.example.test")
    assert "status: NXDOMAIN" in out
    assert proxy_dns(lc, "forwarded") > forwarded


def test_unmeshed_pod_asks_the_node_directly(lc: LocalCluster) -> None:
    out = run(lc, "plain", "dig", "+search", "grpc")
    assert "SERVER: 198.18.0.1#53" in out and vip(lc, "grpc") in out
    assert "status: NXDOMAIN" in run(lc, "plain", "dig", "+tries=1", "nothing.example.test")


def test_dns_capture_off_by_annotation(lc: LocalCluster) -> None:
    pod = lc.pod(NS, "nodns")
    assert pod is not None and pod["proxyVersion"]  # meshed, but its DNS is its own
    rules = subprocess.run(["ip", "netns", "exec", pod["netns"], "iptables-legacy-save", "-t", "nat"],
                           capture_output=True, text=True).stdout
    assert "REDIRECT --to-ports 15001" in rules and "REMORA_DNS" not in rules
    assert run(lc, "nodns", "dig", "+short", "+search", "grpc") == vip(lc, "grpc")
    metrics = run(lc, "nodns", "curl", "-s", "http://127.0.0.1:15090/metrics")
    assert "remora_requests_total" in metrics and "remora_dns_requests_total" not in metrics
