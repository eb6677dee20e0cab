"""The local cluster for real: namespaces, processes, probes, restarts, exec, logs, teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lc_kit import REMORACTL, LocalCluster, local_cluster

from local_cluster import client, netns
from local_cluster.procs import PidRecords, is_alive

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("local") / "state") as cluster:
        yield cluster


WEB = """
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello}}
spec:
  securityContext: {runAsUser: 1000}
  containers:
  - name: web
    command: [sh, -c, 'echo "starting as $(id -u) with IP $MY_IP"; exec python3 -m http.server 8000']
    ports: [{name: http, containerPort: 8000}]
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
    env: [{name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    volumeMounts: [{name: scratch, mountPath: /var/run/remora-test/scratch}]
  volumes: [{name: scratch, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: main, command: [sleep, infinity]}]
"""


def _ready(p: dict) -> bool:
    return p["phase"] == "Running" and p["ready"].split("/")[0] == p["ready"].split("/")[1]


def test_pod_runs_as_its_uid_with_env_and_logs(lc: LocalCluster) -> None:
    out = lc.apply(WEB)
    assert "Pod default/hello created" in out
    pod = lc.wait_pod("default", "hello", _ready)
    assert pod["podIP"].startswith("198.18.")
    assert f"starting as 1000 with IP {pod['podIP']}" in lc.ok("logs", "hello")
    # exec: the container's uid, env and mounts; exit code and output passed through.
    res = lc.ctl("exec", "hello", "--", "sh", "-c",
                 'id -u; echo "$MY_IP"; touch /var/run/remora-test/scratch/f && echo wrote; '
                 'echo oops >&2; exit 3')
    assert res.returncode == 3
    assert res.stdout.split() == ["1000", pod["podIP"], "wrote"]
    assert "oops" in res.stderr
    # Mount paths exist only inside the container: nothing was made on the host.
    assert not Path("/var/run/remora-test").exists()
    assert lc.apply(WEB).count("unchanged") == 3


def test_services_resolve_and_reach_ready_endpoints(lc: LocalCluster) -> None:
    lc.apply(WEB)
    lc.wait_pod("default", "hello", _ready)
    lc.wait_pod("default", "client", _ready)
    svc = next(s for s in lc.status()["services"] if s["name"] == "hello")
    assert svc["clusterIP"].startswith("198.19.")
    for name in ("hello", "hello.default", "hello.default.svc.cluster.local"):
        assert lc.ok("exec", "client", "--", "getent", "hosts", name).split()[0] == svc["clusterIP"]
    deadline = time.monotonic() + 10  # DNAT follows readiness after a short debounce
    while True:
        res = lc.ctl("exec", "client", "--", "curl", "-s", "-m", "2", "-o", "/dev/null",
                     "-w", "%{http_code}", "http://hello/")
        if res.stdout == "200" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert res.stdout == "200", res.stderr


RESTARTS = """
apiVersion: v1
kind: Pod
metadata: {name: on-failure}
spec:
  restartPolicy: OnFailure
  containers: [{name: c, command: [sh, -c, 'echo run; exit 3']}]
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  restartPolicy: Never
  containers: [{name: c, command: [sh, -c, 'echo run; exit 3']}]
---
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: OnFailure
  containers: [{name: c, command: [sh, -c, 'echo run; exit 0']}]
"""


def test_restart_policy_is_honoured(lc: LocalCluster) -> None:
    lc.apply(RESTARTS)
    p = lc.wait_pod("default", "on-failure", lambda p: p["restarts"] >= 2, timeout=20)
    assert p["phase"] == "Running"
    assert lc.ok("logs", "on-failure").count("run") >= 2
    never = lc.wait_pod("default", "never", lambda p: p["phase"] == "Failed")
    done = lc.wait_pod("default", "done", lambda p: p["phase"] == "Succeeded")
    assert never["restarts"] == 0 and done["restarts"] == 0
    assert lc.ok("logs", "never").count("run") == 1
    assert "Pod default/never deleted" in lc.ok("delete", "-f", "-", input=RESTARTS)
    assert not [n for n in netns.list_netns() if n.startswith(f"{lc.prefix}-default-never")]


ORDERED = """
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  initContainers:
  - name: first
    command: [sh, -c, 'echo first >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: sidecar
    restartPolicy: Always
    command: [sh, -c, 'sleep 1; echo sidecar >> /work/order; exec python3 -m http.server 9000']
    startupProbe: {tcpSocket: {port: 9000}, periodSeconds: 1, failureThreshold: 30}
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    command: [sh, -c, 'echo app >> /work/order; cat /work/order;
              curl -s -o /dev/null -w "sidecar answered %{http_code}\\n" http://127.0.0.1:9000/;
              exec sleep infinity']
    volumeMounts: [{name: work, mountPath: /work}]
  volumes: [{name: work, emptyDir: {}}]
"""


def test_init_containers_in_order_and_sidecar_gates_the_app(lc: LocalCluster) -> None:
    lc.apply(ORDERED)
    pod = lc.wait_pod("default", "ordered", lambda p: "sidecar answered" in lc.all_logs(
        "default", "ordered"), timeout=30)
    log = lc.ok("logs", "ordered", "-c", "app")
    assert log.split()[:3] == ["first", "sidecar", "app"]
    assert "sidecar answered 200" in log
    kinds = {c["name"]: (c["kind"], c["state"]) for c in pod["containers"]}
    assert kinds == {"first": ("init", "terminated"), "sidecar": ("sidecar", "running"),
                     "app": ("app", "running")}


def test_bad_input_gets_a_clear_error(lc: LocalCluster) -> None:
    res = lc.ctl("apply", "-f", "-", input="""
apiVersion: v1
kind: Pod
metadata: {name: lonely}
spec:
  serviceAccountName: nobody
  containers: [{name: c, command: [sleep, "1"]}]
""")
    assert res.returncode == 1
    assert "service account 'nobody' not found in namespace default" in res.stderr
    res = lc.ctl("apply", "-n", "ghost", "-f", "-", input="""
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
""")
    assert res.returncode == 1 and "namespace 'ghost' not found" in res.stderr
    res = lc.ctl("apply", "-f", "-", input="""
apiVersion: v1
kind: Pod
metadata: {name: bad-probe}
spec:
  containers:
  - {name: c, command: [sleep, "1"], readinessProbe: {httpGet: {path: /, port: web}}}
""")
    assert res.returncode == 1 and "port 'web' is neither a number nor a named container port" in res.stderr
    assert lc.pod("default", "bad-probe") is None
    res = lc.ctl("exec", "nosuchpod", "--", "true")
    assert res.returncode == 1 and 'pod "nosuchpod" not found' in res.stderr
    res = lc.ctl("apply", "-f", "-", input="""
apiVersion: v1
kind: Pod
metadata: {name: missing-command}
spec:
  containers: [{name: c, command: [no-such-command-here]}]
""")
    assert res.returncode == 0
    lc.wait_pod("default", "missing-command", lambda p: p["restarts"] >= 1)
    assert "command 'no-such-command-here' not found on this host" in lc.ok("logs", "missing-command")


def test_down_after_a_crash_leaves_nothing(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "state") as lc:
        lc.apply(WEB)
        lc.wait_pod("default", "hello", _ready)
        pids = PidRecords(lc.state.pids).alive()
        assert len(pids) >= 3  # control plane, injector, the pods' containers
        daemon = int(lc.state.daemon_pid.read_text())
        os.kill(daemon, signal.SIGKILL)  # a crash: nothing gets the chance to clean up
        time.sleep(0.2)
        assert lc.leftovers()
        first = lc.ctl("down")
        assert first.returncode == 0, first.stderr
        assert lc.leftovers() == []
        assert not [p for p in [*pids, daemon] if is_alive(p)]
        second = lc.ctl("down")
        assert second.returncode == 0 and "nothing to remove" in second.stdout


INJECTED = """
apiVersion: v1
kind: Pod
metadata:
  name: meshed
  labels: {remora.dev/inject: "true"}
spec:
  containers: [{name: app, command: [sleep, infinity]}]
"""


def test_pods_go_through_the_injector_webhook(lc: LocalCluster) -> None:
    out = lc.apply(INJECTED)
    assert "Pod default/meshed created" in out
    pod = lc.wait_pod("default", "meshed", lambda p: p["containers"][0]["state"] == "terminated")
    kinds = [(c["name"], c["kind"]) for c in pod["containers"]]
    assert kinds[:2] == [("remora-init", "init"), ("remora-proxy", "sidecar")]
    assert pod["containers"][0]["exitCode"] == 0, lc.all_logs("default", "meshed")
    assert pod["proxyVersion"]
    rules = subprocess.run(["ip", "netns", "exec", pod["netns"], "iptables-legacy-save", "-t", "nat"],
                           capture_output=True, text=True).stdout
    assert "-j REDIRECT --to-ports 15001" in rules
    # The projected token and the trust root are where the injected env says they are.
    res = lc.ctl("exec", "meshed", "-c", "remora-proxy", "--", "sh", "-c",
                 'id -u; test -s "$REMORA_TOKEN_FILE" && test -s "$REMORA_TRUST_ROOT" && echo mounted')
    assert res.stdout.split() == ["1337", "mounted"], res.stderr
    denied = lc.ctl("apply", "-f", "-", input=INJECTED.replace("meshed", "loud").replace(
        "labels:", "annotations: {remora.dev/log-level: loud}\n  labels:"))
    assert denied.returncode == 1
    assert 'admission webhook "remora-injector" denied the request' in denied.stderr
    assert "remora.dev/log-level" in denied.stderr


def test_up_explains_a_python_other_uids_cannot_run(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    # A Python under a private home directory (mode 0700), as pyenv in /root is.
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(python))
    with pytest.raises(client.ClusterError, match="uid 1337 cannot run .*every uid can execute"):
        client.check_runnable_by(1337)


SCALED = """
apiVersion: v1
kind: Namespace
metadata: {name: scale}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleeper, namespace: scale}
spec:
  replicas: 3
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      containers: [{name: c, command: [sleep, infinity]}]
"""


def test_deployments_scale_and_namespaces_cascade(lc: LocalCluster) -> None:
    def names() -> list[str]:
        return sorted(p["name"] for p in lc.status()["pods"] if p["namespace"] == "scale")

    lc.apply(SCALED)
    three = names()
    assert len(three) == 3 and all(n.startswith("sleeper-") for n in three)
    assert "Deployment scale/sleeper configured" in lc.apply(SCALED.replace("replicas: 3", "replicas: 1"))
    assert names() == three[:1]
    assert "Namespace scale deleted" in lc.ok("delete", "-f", "-", input=SCALED)
    assert names() == []
    assert not [n for n in netns.list_netns() if n.startswith(f"{lc.prefix}-scale-")]


def test_logs_follow(lc: LocalCluster) -> None:
    lc.apply("""
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers: [{name: c, command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done']}]
""")
    lc.wait_pod("default", "ticker", lambda p: p["phase"] == "Running")
    follow = subprocess.Popen([REMORACTL, "local", "logs", "-f", "ticker"], env=lc.env,
                              stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        # Follow until four new ticks arrived (a loaded machine may start remoractl slowly).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(x.startswith("tick") for x in lines) < 8:
            line = follow.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
    finally:
        follow.send_signal(signal.SIGINT)
        out, _ = follow.communicate(timeout=10)
    assert follow.returncode == 0
    ticks = [int(line.split()[1]) for line in lines + out.splitlines() if line.startswith("tick")]
    assert len(ticks) >= 8 and ticks == list(range(1, len(ticks) + 1))
