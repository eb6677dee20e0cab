"""Revisions on the local cluster: more control plane + injector pairs next to the default one,
as the chart's ``revision`` value installs them on Kubernetes (docs/upgrade.md).

Revision R gets its own control plane in the node namespace (on 198.18.0.1, ports
15012+100k and 15014+100k), its own injector webhook on 127.0.0.1 (with ``/version`` on a
monitoring port) and its own mesh config (``revision: R``, pointing proxies at R's control
plane). All revisions share the objects, the CA and the token key, as revisions share the API
server and the mesh root on Kubernetes. ``--version X`` runs R's processes as release X
(``REMORA_VERSION_OVERRIDE``) and makes its injector inject image tag X, which the local
cluster turns into the proxies' version (local_cluster/images.py).

Which webhook reviews a Pod CREATE follows the chart's selectors: the pod's ``remora.dev/rev``,
else its namespace's, selects that revision's webhook (none when that revision is not
installed); without one the default webhook takes the ``remora.dev/inject`` cases as before.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from control_plane.api import annotations as ann
from control_plane.api.ports import DISCOVERY_PORT, MONITORING_PORT
from control_plane.api.version import OVERRIDE_ENV
from local_cluster import admission, config, netns

if TYPE_CHECKING:
    from local_cluster.cluster import Cluster
    from local_cluster.daemon import Component

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PORT_STEP = 100


@dataclass
class Revision:
    name: str
    index: int  # 1, 2, ...: picks its control plane's ports
    webhook_port: int
    monitoring_port: int  # the injector's /version and /metrics on 127.0.0.1
    version: str | None = None

    @property
    def discovery_port(self) -> int:
        return DISCOVERY_PORT + PORT_STEP * self.index

    @property
    def control_plane_monitoring_port(self) -> int:
        return MONITORING_PORT + PORT_STEP * self.index

    def dir(self, state: config.StateDir) -> Path:
        return revision_dir(state, self.name)

    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "controlPlane": f"{netns.GATEWAY}:{self.discovery_port}",
                "controlPlaneMonitoring": f"http://{netns.GATEWAY}:{self.control_plane_monitoring_port}",
                "webhook": self.webhook_url(),
                "injectorMonitoring": f"http://127.0.0.1:{self.monitoring_port}"}


def revision_dir(state: config.StateDir, name: str) -> Path:
    return state.root / "revisions" / name


def mesh_config_path(state: config.StateDir, name: str) -> Path:
    """The mesh config revision ``name``'s injector reads (the default revision's is the cluster's)."""
    return state.mesh_config if name == ann.DEFAULT_REVISION else revision_dir(state, name) / "mesh.yaml"


def check_name(name: str) -> str:
    if name == ann.DEFAULT_REVISION or not _NAME.match(name):
        raise ValueError(f"revision {name!r}: accepted: a DNS label other than "
                         f"{ann.DEFAULT_REVISION!r} (that one is the cluster's own)")
    return name


def mesh_config(rev: Revision) -> dict[str, Any]:
    mesh: dict[str, Any] = {"controlPlaneAddress": f"{netns.GATEWAY}:{rev.discovery_port}",
                            "revision": rev.name}
    if rev.version:
        mesh["proxyImage"] = f"ghcr.io/remora-mesh/remora:{rev.version}"
        mesh["proxyVersion"] = rev.version
    return mesh


def argv(state: config.StateDir, rev: Revision) -> tuple[list[str], list[str]]:
    """(control plane, injector) command lines of one revision."""
    bin_dir, d = config.BIN_DIR, rev.dir(state)
    control = [str(bin_dir / "remora-control"), "--source", "files", "--dir", str(state.objects),
               "--ca-dir", str(state.ca), "--token-key", str(state.token_key),
               "--port", str(rev.discovery_port), "--serving-ip", str(netns.GATEWAY),
               "--monitoring-address", str(netns.GATEWAY),
               "--monitoring-port", str(rev.control_plane_monitoring_port), "--revision", rev.name]
    injector = [str(bin_dir / "remora-injector"), "--addr", "127.0.0.1", "--port", str(rev.webhook_port),
                "--self-signed-dir", str(d / "injector"), "--mesh-config", str(mesh_config_path(state, rev.name)),
                "--without-api-server", "--namespaces", str(state.namespaces_file),
                "--metrics-addr", "127.0.0.1", "--metrics-port", str(rev.monitoring_port)]
    return control, injector


class Revisions:
    """The revisions a daemon runs: start, stop, list; the webhook each pod goes to."""

    def __init__(self, state: config.StateDir, node_netns: str, pids: Any) -> None:
        self.state, self.node_netns, self.pids = state, node_netns, pids
        self.running: dict[str, tuple[Revision, list[Component]]] = {}

    def add(self, name: str, version: str | None) -> Revision:
        from local_cluster.daemon import Component, free_port

        check_name(name)
        if name in self.running:
            raise ValueError(f"revision {name!r} is already running")
        index = 1 + max([r.index for r, _ in self.running.values()], default=0)
        webhook, monitoring = free_port(0), free_port(0)
        while monitoring == webhook:
            monitoring = free_port(0)
        rev = Revision(name, index, webhook, monitoring, version)
        d = rev.dir(self.state)
        (d / "injector").mkdir(parents=True, exist_ok=True)
        mesh_config_path(self.state, name).write_text(yaml.safe_dump(mesh_config(rev)))
        (d / "revision.json").write_text(json.dumps(asdict(rev)))
        control, injector = argv(self.state, rev)
        env = {OVERRIDE_ENV: version} if version else {}
        components = [
            Component(f"control-plane-{name}", _with_env(control, env), self.state.system / f"control-plane-{name}.log",
                      self.pids, self.node_netns),
            Component(f"injector-{name}", _with_env(injector, env), self.state.system / f"injector-{name}.log",
                      self.pids),
        ]
        for c in components:
            c.start()
        self.running[name] = (rev, components)
        return rev

    async def remove(self, name: str) -> None:
        if name not in self.running:
            known = ", ".join(sorted(self.running)) or "none"
            raise ValueError(f"revision {name!r} is not running (running: {known})")
        _, components = self.running.pop(name)
        await asyncio.gather(*(c.stop() for c in components), return_exceptions=True)

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.remove(name)

    def view(self) -> list[dict[str, Any]]:
        return [{**rev.view(), "components": [c.status() for c in comps]}
                for rev, comps in sorted(self.running.values(), key=lambda rc: rc[0].index)]

    def webhook_for(self, pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> Revision | None | str:
        """The revision whose webhook reviews this pod; "default" for the cluster's own; None: none."""
        labels = (pod.get("metadata") or {}).get("labels") or {}
        rev = labels.get(ann.REV_LABEL) or namespace_labels.get(ann.REV_LABEL)
        if rev is None or rev == ann.DEFAULT_REVISION:
            if rev is None and not admission.selected(pod, namespace_labels):
                return None
            return ann.DEFAULT_REVISION
        found = self.running.get(rev)
        return found[0] if found else None


def _with_env(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """Component runs argv with the daemon's environment: ``env`` goes in through env(1)."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv] if env else argv


async def admit(cluster: Cluster, pod: dict[str, Any], namespace_labels: Mapping[str, str]
                ) -> tuple[dict[str, Any], list[str]]:
    """The API server's webhook call for one Pod CREATE, to the revision that selects it."""
    revisions = cluster.revisions
    target = (revisions.webhook_for(pod, namespace_labels) if revisions is not None
              else (ann.DEFAULT_REVISION if admission.selected(pod, namespace_labels) else None))
    if target is None:
        return pod, []
    if target == ann.DEFAULT_REVISION:
        await cluster._wait_webhook()
        return await admission.admit(pod, cluster.webhook_url, cluster.state.injector / "ca.crt")
    assert isinstance(target, Revision)
    ca = target.dir(cluster.state) / "injector" / "ca.crt"
    await _wait_for(ca, target.webhook_port)
    return await admission.admit(pod, target.webhook_url(), ca)


async def _wait_for(ca: Path, port: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if ca.exists():
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                w.close()
                return
            except (OSError, TimeoutError):
                pass
        if loop.time() > deadline:
            raise admission.WebhookUnavailable(f"the injector webhook at 127.0.0.1:{port} is not answering")
        await asyncio.sleep(0.2)


async def fetch_in_netns(netns_name: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` from inside a network namespace (curl): (HTTP status, body); 502 when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *netns.command_in(netns_name, ["curl", "-sS", "-m", str(timeout), "-w", "\\n%{http_code}", url]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    body, _, code = out.rpartition(b"\n")
    if proc.returncode != 0 or not code.strip().isdigit() or int(code) == 0:
        reason = err.decode(errors="replace").strip() or f"curl exit {proc.returncode}"
        return 502, json.dumps({"error": f"{url}: {reason}"}).encode()
    return int(code), body
