"""Probe rewriting for real: under STRICT mTLS a kubelet-style plaintext probe cannot reach the
app, so the injector points it at the proxy's :15020/app-health/..., and the proxy runs the
original probe against the app from inside the pod. The pod reports ready through its proxy;
when the app says it is not ready, so does the rewritten probe."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lc_kit import LocalCluster, local_cluster

from control_plane.api.ports import AGENT_PORT

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The app answers /ready with 200 until it is told (POST /unready) to answer 503.
APP = r"""
import http.server
state = {"ready": True}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path != "/ready" or state["ready"] else 503
        self.send_response(code); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")
    def do_POST(self):
        state["ready"] = False
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: probes, labels: {{remora.dev/inject: enabled}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: probes}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: probed, namespace: probes}}
---
apiVersion: v1
kind: Pod
metadata: {{name: probed, namespace: probes, labels: {{app: probed}}}}
spec:
  serviceAccountName: probed
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: app
    command: [python3, -c, {yaml.safe_dump(APP, default_style='"').strip()}]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}
    livenessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 5}}
"""


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("probes") / "state") as cluster:
        yield cluster


def _app_ready(pod: dict) -> bool:
    return any(c["name"] == "app" and c.get("ready") for c in pod["containers"])


def _stored_pod(lc: LocalCluster) -> dict:
    for path in Path(lc.state.objects).rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Pod" and doc["metadata"]["name"] == "probed":
                return doc
    raise AssertionError("the patched pod is not in the local API server's store")


def _from_node(lc: LocalCluster, url: str) -> subprocess.CompletedProcess:
    """A plaintext request from the node, where the kubelet probes from."""
    node_netns = lc.status()["node"]["netns"]
    return subprocess.run(["ip", "netns", "exec", node_netns, "curl", "-sS", "-o", "/dev/null",
                           "-w", "%{http_code}", "--max-time", "3", url],
                          capture_output=True, text=True, timeout=20)


def test_rewritten_readiness_probe_reports_through_the_proxy_under_strict(lc: LocalCluster) -> None:
    lc.apply(MANIFEST, namespace="probes")
    pod = lc.wait_pod("probes", "probed", _app_ready, timeout=60)

    app = next(c for c in _stored_pod(lc)["spec"]["containers"] if c["name"] == "app")
    probe = app["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/app-health/app/readyz", AGENT_PORT), probe

    ip = pod["podIP"]
    # The original probe, as a kubelet would send it, is refused: plaintext under STRICT.
    direct = _from_node(lc, f"http://{ip}:8080/ready")
    assert direct.stdout in ("000", ""), f"plaintext reached the app under STRICT: {direct.stdout}"
    # The rewritten one is answered by the proxy, which ran the original probe against the app.
    assert _from_node(lc, f"http://{ip}:{AGENT_PORT}/app-health/app/readyz").stdout == "200"

    # The app stops being ready: the proxy reports it, and the pod is no longer ready.
    res = lc.ctl("exec", "probed", "-n", "probes", "-c", "app", "--",
                 "curl", "-sS", "-X", "POST", "http://127.0.0.1:8080/unready")
    assert res.returncode == 0, res.stderr
    assert _from_node(lc, f"http://{ip}:{AGENT_PORT}/app-health/app/readyz").stdout == "503"
    lc.wait_pod("probes", "probed", lambda p: not _app_ready(p), timeout=30)


def test_without_the_rewrite_strict_refuses_the_probe(lc: LocalCluster) -> None:
    """The control: the same pod with rewriting turned off never becomes ready under STRICT."""
    unrewritten = MANIFEST.split("---")[-1].replace("name: probed, namespace", "name: plain, namespace")
    unrewritten = unrewritten.replace("labels: {app: probed}}",
                                      'labels: {app: plain}, annotations: {remora.dev/rewrite-probes: "false"}}')
    lc.apply(MANIFEST.rsplit("---", 1)[0] + "---" + unrewritten, namespace="probes")
    pod = lc.wait_pod("probes", "plain", lambda p: any(
        c["name"] == "app" and c.get("state") == "running" for c in p["containers"]), timeout=60)
    time.sleep(4)  # several probe periods
    pod = lc.pod("probes", "plain")
    assert pod is not None and not _app_ready(pod), pod
