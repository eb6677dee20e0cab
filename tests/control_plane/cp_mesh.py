"""Pods with real proxies configured by a real ``remora-control`` process (no bootstrap).

The control plane runs in the node namespace on the bridge address (where pods reach it),
reading a manifest directory that the test edits; each pod gets remora-init rules, a token
minted with the control plane's key, and a remora-proxy started in control-plane mode.

    mesh = CpMesh.start(node, bin_dir)
    try:
        server = mesh.add_pod("server", "beta", "server", {"app": "echo"})
        ...
    finally:
        mesh.close()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mesh_harness import APP_UID, ProxyHandle

from control_plane.api import ports, tokens
from control_plane.api.annotations import STATUS_ANNOTATION
from local_cluster import netns

CONTROL_IP = str(netns.GATEWAY)
MONITORING_PORT = 15014
MONITORING_URL = f"http://{CONTROL_IP}:{MONITORING_PORT}"
APPS = Path(__file__).parent / "cp_apps.py"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class CpMesh:
    node: netns.Node
    bin_dir: Path
    cert_ttl: str = "24h"
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="remora-cpmesh-")))
    control: subprocess.Popen | None = None
    proxies: dict[str, ProxyHandle] = field(default_factory=dict)
    pods: dict[str, netns.Pod] = field(default_factory=dict)
    apps: list[subprocess.Popen] = field(default_factory=list)
    proxy_env: dict[str, str] = field(default_factory=dict)  # extra env of every proxy

    @property
    def manifests(self) -> Path:
        return self.tmp / "manifests"

    @classmethod
    def start(cls, node: netns.Node, bin_dir: Path, cert_ttl: str = "24h") -> CpMesh:
        mesh = cls(node, bin_dir, cert_ttl)
        os.chmod(mesh.tmp, 0o755)
        try:
            mesh.manifests.mkdir()
            tokens.generate_key_file(mesh.tmp / "token.key")
            mesh.start_control_plane()
            shutil.copy(mesh.tmp / "ca" / "root-cert.pem", mesh.tmp / "root-cert.pem")
            os.chmod(mesh.tmp / "root-cert.pem", 0o644)
        except BaseException:
            mesh.close()
            raise
        return mesh

    # -- the control plane -------------------------------------------------------------------

    def start_control_plane(self) -> None:
        argv = [
            str(self.bin_dir / "remora-control"), "--source", "files", "--dir", str(self.manifests),
            "--ca-dir", str(self.tmp / "ca"), "--token-key", str(self.tmp / "token.key"),
            "--address", CONTROL_IP, "--serving-ip", CONTROL_IP,
            "--monitoring-address", CONTROL_IP, "--monitoring-port", str(MONITORING_PORT),
            "--cert-ttl", self.cert_ttl,
        ]
        log = open(self.tmp / "control-plane.log", "ab")  # noqa: SIM115 (owned by the process)
        self.control = netns.spawn_in(self.node.netns, argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self._curl("/ready").returncode == 0 or self.control.poll() is not None,
                 15, "the control plane to be ready")
        if self.control.poll() is not None:
            raise RuntimeError(f"remora-control exited:\n{self.control_log()}")

    def kill_control_plane(self) -> None:
        """SIGKILL: no goodbye to the proxies, as when its node dies."""
        if self.control is not None and self.control.poll() is None:
            os.killpg(self.control.pid, signal.SIGKILL)
            self.control.wait(5)

    def control_log(self) -> str:
        return (self.tmp / "control-plane.log").read_text(errors="replace")

    def _curl(self, path: str) -> subprocess.CompletedProcess:
        return netns.exec_in(self.node.netns, ["curl", "-sSf", "--max-time", "3", MONITORING_URL + path])

    def remoractl(self, *args: str) -> subprocess.CompletedProcess:
        return netns.exec_in(self.node.netns, [str(self.bin_dir / "remoractl"), *args,
                                               "--control-plane-url", MONITORING_URL])

    def proxy_status(self) -> dict[str, dict]:
        r = self.remoractl("proxy-status", "-o", "json")
        if r.returncode != 0:
            return {}
        return {p["proxy_id"]: p for p in json.loads(r.stdout)["proxies"]}

    def wait_synced(self, proxy_ids: list[str], timeout: float = 20) -> dict[str, dict]:
        def synced():
            st = self.proxy_status()
            return st if all(st.get(p, {}).get("status") == "SYNCED" for p in proxy_ids) else None

        return wait_for(synced, timeout, f"{proxy_ids} to be SYNCED", interval=0.3)

    def wait_new_version(self, proxy_id: str, old: str | None, timeout: float = 20) -> dict:
        """Wait until ``proxy_id`` ACKed a version other than ``old`` (a manifest change landed)."""
        def changed():
            st = self.proxy_status().get(proxy_id, {})
            return st if st.get("status") == "SYNCED" and st.get("acked_version") != old else None

        return wait_for(changed, timeout, f"{proxy_id} to ACK a version other than {old}", interval=0.2)

    # -- manifests ---------------------------------------------------------------------------

    def apply(self, name: str, *objects: dict) -> None:
        """Write (or replace) one manifest file atomically."""
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(objects))
        os.replace(tmp, self.manifests / f"{name}.yaml")

    def remove(self, name: str) -> None:
        (self.manifests / f"{name}.yaml").unlink(missing_ok=True)

    # -- pods --------------------------------------------------------------------------------

    def add_pod(self, name: str, namespace: str, sa: str, labels: dict[str, str],
                meshed: bool = True, hosts: dict[str, str] | None = None,
                address: str | None = None) -> netns.Pod:
        pod = self.node.add_pod(name, address)
        self.pods[name] = pod
        pod.write_hosts(hosts or {})
        meta = {"name": name, "namespace": namespace, "labels": labels}
        if meshed:
            meta["annotations"] = {STATUS_ANNOTATION: json.dumps({"proxyVersion": "test"})}
        self.apply(f"pod-{name}", {
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
            "status": {"podIP": pod.ip, "phase": "Running"},
        })
        if meshed:
            pod.exec([str(self.bin_dir / "remora-init"), "--proxy-uid", str(ports.PROXY_UID),
                      "--proxy-gid", str(ports.PROXY_GID)], check=True)
            self._start_proxy(pod, namespace, sa)
        return pod

    def _start_proxy(self, pod: netns.Pod, namespace: str, sa: str) -> None:
        d = self.tmp / pod.name
        (d / "work").mkdir(parents=True)
        key = tokens.load_key(self.tmp / "token.key")
        (d / "token").write_text(tokens.mint(key, namespace, sa, pod.name))
        for p in (d, d / "work", d / "token"):
            os.chown(p, ports.PROXY_UID, ports.PROXY_GID)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_NAME": pod.name,
            "POD_NAMESPACE": namespace, "POD_IP": pod.ip, "SERVICE_ACCOUNT": sa,
            "REMORA_CONTROL_PLANE": f"{CONTROL_IP}:{ports.DISCOVERY_PORT}",
            "REMORA_TOKEN_FILE": str(d / "token"), "REMORA_TRUST_ROOT": str(self.tmp / "root-cert.pem"),
            "REMORA_WORKDIR": str(d / "work"),
            "REMORA_LOG_LEVEL": os.environ.get("REMORA_TEST_LOG_LEVEL", "info"),
            **self.proxy_env,
        }
        log = self.tmp / f"{pod.name}-proxy.log"
        with open(log, "wb") as out:
            proc = pod.spawn([str(self.bin_dir / "remora-proxy")], uid=ports.PROXY_UID,
                             gid=ports.PROXY_GID, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.proxies[pod.name] = ProxyHandle(pod, proc, d / "work", log)
        r = pod.exec([str(self.bin_dir / "remora-proxy"), "wait", "--timeout", "20"], timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"{pod.name} proxy not ready: {r.stderr.strip()}\n{self.logs()}")

    def spawn_app(self, pod: netns.Pod, *args: str) -> subprocess.Popen:
        with open(self.tmp / f"{pod.name}-app.log", "ab") as log:
            proc = pod.spawn([sys.executable, str(APPS), *args], uid=APP_UID, gid=APP_UID,
                             stdout=log, stderr=subprocess.STDOUT)
        self.apps.append(proc)
        return proc

    def run_app(self, pod: netns.Pod, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return pod.exec([sys.executable, str(APPS), *args], uid=APP_UID, gid=APP_UID, timeout=timeout)

    def serve(self, pod: netns.Pod, port: int, name: str) -> None:
        self.spawn_app(pod, "serve", str(port), name)
        try:
            wait_for(lambda: pod.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip(), 10,
                     f"{name} to listen on {port}")
        except AssertionError:
            raise AssertionError((self.tmp / f"{pod.name}-app.log").read_text()) from None

    def logs(self) -> str:
        out = f"\n--- control plane ---\n{self.control_log()[-4000:]}"
        for n, h in self.proxies.items():
            out += f"\n--- {n} proxy ---\n{h.log_text()[-3000:]}"
        return out

    def close(self) -> None:
        for proc in self.apps:
            netns.stop_process(proc, timeout=3)
        for h in self.proxies.values():
            netns.stop_process(h.proc, timeout=8)
        if self.control is not None:
            netns.stop_process(self.control, timeout=5)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)


def service(name: str, namespace: str, vip: str, port: int, selector: dict[str, str],
            port_name: str = "http") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": vip, "selector": selector,
                     "ports": [{"name": port_name, "port": port, "targetPort": port}]}}


def peer_authentication(name: str, namespace: str, mode: str) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"mtls": {"mode": mode}}}
