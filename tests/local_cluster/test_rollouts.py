"""`remoractl local rollout` for real: a Deployment gated on readiness, restart, status, history
and undo; a StatefulSet replaced from the top ordinal down; a DaemonSet restarted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from lc_kit import LocalCluster, local_cluster

from local_cluster import netns

pytestmark = pytest.mark.root

OBJECTS = """
apiVersion: v1
kind: Namespace
metadata: {name: ro}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ro}
spec:
  replicas: 2
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [python3, -m, http.server, "8000"]
        readinessProbe: {httpGet: {path: /, port: 8000}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: ro}
spec:
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {terminationGracePeriodSeconds: 1, containers: [{name: db, command: [sleep, infinity]}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: ro}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {terminationGracePeriodSeconds: 1, containers: [{name: agent, command: [sleep, infinity]}]}
"""


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("rollouts") / "state") as cluster:
        cluster.apply(OBJECTS)
        yield cluster


def pods(lc: LocalCluster, owner: str) -> dict[str, dict]:
    return {p["name"]: p for p in lc.status()["pods"]
            if p["namespace"] == "ro" and p["workload"] == owner and not p["terminating"]}


def ready(p: dict) -> bool:
    done, total = p["ready"].split("/")
    return p["phase"] == "Running" and done == total


def test_deployment_restart_keeps_replicas_ready_and_undo_goes_back(lc: LocalCluster) -> None:
    assert "successfully rolled out" in lc.ok("rollout", "status", "-n", "ro", "deployment/web")
    first = set(pods(lc, "web"))
    low = [99]
    stop = threading.Event()

    def watch() -> None:  # maxUnavailable 0: two Ready pods at every moment
        while not stop.is_set():
            low[0] = min(low[0], sum(ready(p) for p in pods(lc, "web").values()))
            time.sleep(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        assert "deployment.apps/web restarted" in lc.ok("rollout", "restart", "-n", "ro", "deployment/web")
        out = lc.ok("rollout", "status", "-n", "ro", "deployment/web")
    finally:
        stop.set()
        t.join()
    assert "Waiting for deployment \"web\" rollout to finish" in out, out
    assert out.strip().endswith('deployment "web" successfully rolled out')
    assert low[0] >= 2
    second = set(pods(lc, "web"))
    assert len(second) == 2 and first.isdisjoint(second)
    history = lc.ok("rollout", "history", "-n", "ro", "deployment/web")
    rows = [line.split(None, 2) for line in history.splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("1", "apply"), ("2", "rollout restart")], history

    assert "rolled back (to revision 1)" in lc.ok("rollout", "undo", "-n", "ro", "deployment/web")
    lc.ok("rollout", "status", "-n", "ro", "deployment/web")
    assert set(pods(lc, "web")) == first  # the first template again: its hash, its names


def test_statefulset_restarts_from_the_highest_ordinal(lc: LocalCluster) -> None:
    lc.ok("rollout", "status", "-n", "ro", "statefulset/db")
    before = {n: p["labels"]["pod-template-hash"] for n, p in pods(lc, "db").items()}
    assert sorted(before) == ["db-0", "db-1"]
    lc.ok("rollout", "restart", "-n", "ro", "statefulset/db")
    order = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(order) < 2:
        for n, p in pods(lc, "db").items():
            if p["labels"]["pod-template-hash"] != before[n] and n not in order:
                order.append(n)
        time.sleep(0.1)
    assert order == ["db-1", "db-0"]
    assert "successfully rolled out" in lc.ok("rollout", "status", "-n", "ro", "statefulset/db")


def test_daemonset_restart_and_clear_errors(lc: LocalCluster) -> None:
    (old,) = pods(lc, "agent")
    lc.ok("rollout", "restart", "-n", "ro", "daemonset/agent")
    assert "successfully rolled out" in lc.ok("rollout", "status", "-n", "ro", "daemonset/agent")
    (new,) = pods(lc, "agent")
    assert new != old
    table = lc.ok("status", "-n", "ro")
    row = next(line.split() for line in table.splitlines() if "daemonset/agent" in line)
    assert row == ["ro", "daemonset/agent", "1/1", "1", "2", "complete"], table
    res = lc.ctl("rollout", "restart", "-n", "ro", "deployment/nope")
    assert res.returncode == 1 and 'deployment "nope" not found in namespace ro' in res.stderr
    res = lc.ctl("rollout", "undo", "-n", "ro", "web")
    assert res.returncode == 1 and "name the workload as KIND/NAME" in res.stderr
    res = lc.ctl("rollout", "undo", "-n", "ro", "deployment/web", "--to-revision", "42")
    assert res.returncode == 1 and "no revision 42" in res.stderr
    res = lc.ctl("injector", "--set", "proxyVerion=1")
    assert res.returncode == 1 and "unknown key(s) proxyVerion" in res.stderr


def test_deleting_the_namespace_mid_rollout_leaves_nothing(lc: LocalCluster) -> None:
    lc.ok("rollout", "restart", "-n", "ro", "deployment/web")
    time.sleep(0.5)  # a surge pod is starting, an old one may be terminating
    assert "Namespace ro deleted" in lc.ok("delete", "-f", "-", input=OBJECTS)
    assert [p["name"] for p in lc.status()["pods"] if p["namespace"] == "ro"] == []
    assert [w for w in lc.status()["workloads"] if w["namespace"] == "ro"] == []
    assert not [n for n in netns.list_netns() if n.startswith(f"{lc.prefix}-ro-")]
