"""Two revisions on the local cluster, the canary flow for real: the default revision serves a
namespace; revision "canary" (simulating release 0.2.0) is added; the namespace is moved by its
``remora.dev/rev`` label; a recreated pod is injected by the canary injector, reports 0.2.0 to
the canary control plane and is SYNCED there; traffic between the two revisions' proxies works
(one mesh root); the canary is removed and traffic keeps flowing; nothing is left behind."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from lc_kit import REMORACTL, LocalCluster, local_cluster

from control_plane.api.version import version

pytestmark = [pytest.mark.root, pytest.mark.slow]

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{remora.dev/inject: enabled{rev}}}}}
"""
HELLO = """
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: shop, labels: {app: hello}}
spec:
  securityContext: {runAsUser: 1000}
  containers:
  - name: web
    command: [python3, -m, http.server, "8000"]
    ports: [{name: http, containerPort: 8000}]
    readinessProbe: {httpGet: {path: /, port: 8000}, periodSeconds: 1}
"""
APP = NAMESPACE.format(rev="") + """---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: shop}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8000}]
---""" + HELLO + """---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  securityContext: {runAsUser: 1000}
  containers: [{name: main, command: [sleep, infinity]}]
"""


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("revisions") / "state") as cluster:
        yield cluster


def ready(p: dict) -> bool:
    have, want = p["ready"].split("/")
    return p["phase"] == "Running" and have == want


def proxies(lc: LocalCluster, monitoring: str) -> dict[str, dict]:
    """/debug/proxies of a control plane (it listens in the node's namespace)."""
    node = lc.status()["node"]["netns"]
    out = subprocess.run(["ip", "netns", "exec", node, "curl", "-sS", "-m", "5", f"{monitoring}/debug/proxies"],
                         capture_output=True, text=True, check=True).stdout
    return {p["proxy_id"]: p for p in json.loads(out)["proxies"]}


def remoractl(lc: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REMORACTL, *args], env=lc.env, capture_output=True, text=True, timeout=60)


def curl_hello(lc: LocalCluster, settle: float = 15.0) -> str:
    """The status of GET http://hello.shop/ from the client pod. A pod that just turned Ready
    is an endpoint once the control plane has pushed it (file poll and debounce): until then
    the answer is 503, so ask again for up to ``settle`` seconds."""
    deadline = time.monotonic() + settle
    while True:
        code = lc.ok("exec", "client", "-n", "shop", "--", "curl", "-sS", "-m", "5", "-o",
                     "/dev/null", "-w", "%{http_code}", "http://hello.shop/")
        if code == "200" or time.monotonic() > deadline:
            return code
        time.sleep(0.5)


def test_canary_flow(lc: LocalCluster) -> None:
    lc.apply(APP, "shop")
    hello = lc.wait_pod("shop", "hello", ready, timeout=60)
    lc.wait_pod("shop", "client", ready, timeout=60)
    assert hello["proxyVersion"] == version()
    assert curl_hello(lc) == "200"

    # 1. Install the new revision next to the default one.
    out = lc.ok("revision", "add", "canary", "--version", "0.2.0")
    assert out.startswith("revision canary (version 0.2.0): control plane 198.18.0.1:15112")
    (canary,) = lc.status()["revisions"]
    assert "revision canary" in lc.ok("revision", "list")

    # 2. Move the namespace; 3. recreate its workload: the canary injector injects it.
    lc.apply(NAMESPACE.format(rev=", remora.dev/rev: canary"), "shop")
    lc.ok("delete", "-n", "shop", "-f", "-", input=HELLO)
    lc.apply(HELLO, "shop")
    hello = lc.wait_pod("shop", "hello", ready, timeout=60)
    assert hello["proxyVersion"] == "0.2.0"
    on_canary = proxies(lc, canary["controlPlaneMonitoring"])
    assert set(on_canary) == {"hello.shop"}
    assert on_canary["hello.shop"]["proxy_version"] == "0.2.0"
    assert on_canary["hello.shop"]["status"] == "SYNCED" and on_canary["hello.shop"]["template_hash"]
    assert set(proxies(lc, "http://198.18.0.1:15014")) == {"client.shop"}  # the old revision
    # Proxies of the two revisions talk mTLS to each other: one mesh root.
    assert curl_hello(lc) == "200"

    # What remoractl shows through the local cluster (local[:REV] URLs).
    out = remoractl(lc, "version", "--control-plane-url", "local", "--control-plane-url", "local:canary",
                    "--injector-url", "local:canary")
    assert out.stdout.splitlines()[1:] == [
        f"control plane version: {version()} (revision default), 0.2.0 (revision canary)",
        f"injector version: 0.2.0 (revision canary; injects proxy 0.2.0, template "
        f"{on_canary['hello.shop']['template_hash']})",
        f"data plane version: {', '.join(sorted([f'{version()} (1 proxy)', '0.2.0 (1 proxy)']))}"]
    out = remoractl(lc, "check", "--proxy", "--control-plane-url", "local:canary", "--injector-url", "local:canary")
    assert out.returncode == 0, out.stdout
    # The client still runs the old revision's proxy: OUTDATED against the canary's injector.
    out = remoractl(lc, "proxy-status", "--control-plane-url", "local", "--injector-url", "local:canary")
    assert f"{version()} OUTDATED" in out.stdout.splitlines()[1] and out.stdout.splitlines()[1].startswith("client.shop")
    assert remoractl(lc, "check", "--proxy", "--injector-url", "local:canary").returncode == 1
    # With no URLs, check takes the running local cluster's own (webhook, CA root, proxies).
    out = remoractl(lc, "check")
    assert out.returncode == 0 and out.stdout.count("\u2714") == 5, out.stdout
    out = remoractl(lc, "analyze")  # the live objects: the moved namespace included
    assert out.returncode == 0 and out.stdout.startswith("\u2714 No validation issues"), out.stdout

    # Removing a revision stops its processes; its proxies keep their last configuration.
    lc.ok("revision", "remove", "canary")
    assert lc.status()["revisions"] == []
    assert curl_hello(lc) == "200"
    res = lc.ctl("revision", "remove", "canary")
    assert res.returncode == 1 and "revision 'canary' is not running" in res.stderr
    res = lc.ctl("revision", "add", "default")
    assert res.returncode == 1 and "a DNS label other than 'default'" in res.stderr
