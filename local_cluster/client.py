"""The CLI's side of the local cluster: start and stop the daemon, talk to it, tear down.

``down`` works without the daemon (after a crash): it ends every recorded process group,
deletes every network namespace with the cluster's prefix, the /etc/netns entries and the
state directory.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from control_plane.api.ports import PROXY_UID
from local_cluster import config, netns
from local_cluster.procs import PidRecords, is_alive

UP_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    """A one-line, user-facing error."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def call(state: config.StateDir, method: str, path: str, body: Any = None,
         timeout: float = 300.0) -> tuple[int, Any]:
    """(HTTP status, JSON) from the daemon; ClusterError when it does not answer."""
    conn = _UnixHTTPConnection(state.socket, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except (OSError, http.client.HTTPException) as e:
        raise ClusterError(f"the local cluster at {state.root} is not running ({e}); "
                           "start it with: remoractl local up") from None
    finally:
        conn.close()


def running(state: config.StateDir) -> bool:
    try:
        status, _ = call(state, "GET", "/healthz", timeout=2)
    except ClusterError:
        return False
    return status == 200


def daemon_pid(state: config.StateDir) -> int | None:
    try:
        pid = int(state.daemon_pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_alive(pid) else None


def leftovers(state: config.StateDir, prefix: str) -> list[str]:
    """What a crashed cluster left behind (empty when there is nothing)."""
    found = [f"network namespace {n}" for n in netns.list_netns() if n.startswith(prefix + "-")]
    if state.marker.exists():
        found.append(f"state directory {state.root}")
    return found


def check_runnable_by(uid: int) -> None:
    """Pods run the project's Python as other uids (the proxy as 1337): make sure they can."""
    # Through sh: setpriv itself resolves its command before the uid change takes effect.
    probe = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "sh", "-c",
             'exec "$0" -c "import local_cluster.launcher"', sys.executable]
    res = subprocess.run(probe, capture_output=True, text=True, cwd="/",
                         env={"PYTHONPATH": str(config.REPO_ROOT), "PATH": config.SYSTEM_PATH})
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(
            f"uid {uid} cannot run {sys.executable} with the checkout {config.REPO_ROOT} ({why}); "
            "build the virtualenv from a Python every uid can execute (scripts/find-python) and "
            "make the checkout's parent directories world-searchable")


def up(state: config.StateDir, prefix: str | None = None) -> dict[str, Any]:
    """Start the daemon (idempotent) and wait until it answers; returns its status."""
    reason = netns.have_root_and_tools()
    if reason:
        raise ClusterError(f"the local cluster {reason}")
    check_runnable_by(PROXY_UID)
    if running(state):
        return call(state, "GET", "/status")[1]
    prefix = prefix or state.prefix()
    left = leftovers(state, prefix)
    if left:
        raise ClusterError(f"a previous local cluster was not torn down ({', '.join(left)}); "
                           "run: remoractl local down")
    if state.root.exists() and any(state.root.iterdir()):
        raise ClusterError(f"{state.root} exists and is not a local cluster's state directory; "
                           "choose another with REMORA_LOCAL_DIR")
    state.root.mkdir(parents=True, exist_ok=True)
    os.chmod(state.root, 0o700)  # keys live here; containers see only what is mounted for them
    state.marker.write_text("remora local cluster state; removed by `remoractl local down`\n")
    state.prefix_file.write_text(prefix + "\n")
    state.system.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(config.REPO_ROOT)}
    with open(state.daemon_log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_cluster.daemon", "--dir", str(state.root),
             "--prefix", prefix],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/",
            start_new_session=True)
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the local cluster daemon exited ({proc.returncode}): "
                               f"{_tail(state.daemon_log)}")
        if running(state):
            return call(state, "GET", "/status")[1]
        time.sleep(0.1)
    raise ClusterError(f"the local cluster daemon did not answer within {UP_TIMEOUT:.0f} s; "
                       f"see {state.daemon_log}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def down(state: config.StateDir, prefix: str | None = None) -> list[str]:
    """Remove everything the cluster made; safe to run twice and after a crash."""
    prefix = prefix or state.prefix()
    removed: list[str] = []
    if running(state):
        with contextlib.suppress(ClusterError):
            call(state, "POST", "/shutdown", {}, timeout=60)
        removed.append("daemon (stopped its pods)")
    pid = daemon_pid(state)
    if pid is not None:
        _kill_group(pid)
        removed.append(f"daemon pid {pid}")
    killed = PidRecords(state.pids).kill_all()
    removed += [f"process group {p}" for p in killed]
    removed += [f"network namespace {n}" for n in netns.destroy_prefix(prefix + "-")]
    for d in sorted(netns.NETNS_ETC.glob(f"{prefix}-*")):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    if state.marker.exists():
        shutil.rmtree(state.root, ignore_errors=True)
        removed.append(f"state directory {state.root}")
    elif state.root.exists() and not any(state.root.iterdir()):
        state.root.rmdir()
    return removed


def _kill_group(pid: int, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.05)
        if not is_alive(pid):
            return


def checked(state: config.StateDir, method: str, path: str, body: Any = None) -> Any:
    status, out = call(state, method, path, body)
    if status != 200:
        raise ClusterError((out or {}).get("error") or f"daemon answered HTTP {status}")
    return out


def exec_in_pod(state: config.StateDir, namespace: str, pod: str, container: str | None,
                argv: list[str], **popen: Any) -> subprocess.CompletedProcess:
    """Run ``argv`` in the pod's container context (netns, mounts, uid, env), like kubectl exec."""
    spec = checked(state, "POST", "/exec", {"namespace": namespace, "pod": pod,
                                            "container": container, "argv": argv})
    return subprocess.run(spec["argv"], env=spec["env"], **popen)


def log_path(state: config.StateDir, namespace: str, pod: str, container: str | None) -> Path:
    if container is None:
        for p in checked(state, "GET", "/status")["pods"]:
            if p["namespace"] == namespace and p["name"] == pod:
                container = p["defaultContainer"]
                break
        else:
            raise ClusterError(f'pod "{pod}" not found in namespace {namespace}')
    path = state.log_file(namespace, pod, container)
    if not path.exists():
        raise ClusterError(f"no logs for container {container!r} of pod {namespace}/{pod}")
    return path
