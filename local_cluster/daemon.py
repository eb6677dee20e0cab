"""The local cluster's daemon: API server, kubelet and process supervisor in one process.

    python -m local_cluster.daemon --dir STATE --prefix PREFIX

It creates the node namespace (bridge br0), runs the control plane in it on 198.18.0.1:15012
and the injector webhook on 127.0.0.1, and serves the CLI over ``<state>/daemon.sock``
(HTTP/JSON): ``GET /healthz``, ``GET /status``, ``POST /apply``, ``POST /delete``,
``POST /exec``, ``POST /rollout`` (restart, undo, status), ``POST /injector`` (mesh-config
overrides, then the injector restarts), ``POST /shutdown``. The CLI writes nothing itself: every change goes through
this socket, so the daemon is the only writer of the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from control_plane.api import tokens
from control_plane.api.ports import DISCOVERY_PORT, MONITORING_PORT, WEBHOOK_PORT
from local_cluster import admission, config, manifests, netns, nodedns, revisions
from local_cluster.cluster import Cluster
from local_cluster.manifests import ManifestError
from local_cluster.procs import PidRecords

log = logging.getLogger("remora.local.daemon")
BACKOFF_MAX = 30.0


def free_port(preferred: int) -> int:
    """``preferred`` when nobody listens on it on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


class Component:
    """A system process (control plane, injector) kept running with backoff, logs to a file."""

    def __init__(self, name: str, argv: list[str], log_file: Path, pids: PidRecords,
                 netns_name: str | None = None) -> None:
        self.name, self.argv, self.log_file, self.pids = name, argv, log_file, pids
        self.netns = netns_name
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.stopping = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = 1.0
        while not self.stopping:
            argv = netns.command_in(self.netns, self.argv) if self.netns else self.argv
            env = {**os.environ, "PATH": config.container_path(), "PYTHONPATH": str(config.REPO_ROOT)}
            began = time.monotonic()
            with open(self.log_file, "ab") as out:
                try:
                    self.proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                        stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
                except OSError as e:
                    out.write(f"remora-local: cannot start {self.name}: {e}\n".encode())
                    self.proc = None
            if self.proc is not None:
                self.pids.record(self.proc.pid, self.name)
                self.last_exit = await self.proc.wait()
                self.pids.forget(self.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            if self.stopping:
                return
            log.warning("%s exited (%s); restarting in %.0f s (log: %s)", self.name,
                        self.last_exit, backoff, self.log_file)
            self.restarts += 1
            if time.monotonic() - began > 10:
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def restart(self) -> None:
        """Stop the process and start it again at once (a rollout of this component)."""
        await self.stop()
        self.stopping = False
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "running": self.running, "restarts": self.restarts,
                "lastExit": self.last_exit, "log": str(self.log_file)}

    async def stop(self, grace: float = 5.0) -> None:
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def write_mesh_config(state: config.StateDir, overrides: dict[str, Any] | None = None) -> None:
    """The injector's mesh config: pods reach the control plane on the node's bridge address.

    ``overrides`` (``remoractl local injector --set``) go on top: a new ``proxyVersion`` is how
    the local cluster stands in for a new proxy release (see docs/upgrade.md).
    """
    mesh = {"controlPlaneAddress": f"{netns.GATEWAY}:{DISCOVERY_PORT}", **(overrides or {})}
    state.mesh_config.write_text(yaml.safe_dump(mesh))


class Daemon:
    def __init__(self, state: config.StateDir, prefix: str) -> None:
        self.state, self.prefix = state, prefix
        # Made by start(), before anything serves requests; None only until then.
        self.node: netns.Node = None  # type: ignore[assignment]
        self.cluster: Cluster = None  # type: ignore[assignment]
        self.components: list[Component] = []
        self.stopped = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        st = self.state
        for d in (st.objects, st.ca, st.injector, st.pods, st.system, st.pids):
            d.mkdir(parents=True, exist_ok=True)
        if not st.token_key.exists():
            tokens.generate_key_file(st.token_key)
        write_mesh_config(st)
        self.node = await asyncio.to_thread(netns.Node.create, self.prefix)
        netns.sysctl(self.node.netns, "net.ipv4.ip_forward", "1")  # VIP DNAT routes via br0
        port = free_port(WEBHOOK_PORT)
        self.injector_monitoring = free_port(0)  # its /version, for remoractl version and check
        self.cluster = Cluster(st, self.node, f"https://127.0.0.1:{port}")
        self.cluster.services_sync.write_namespaces_file()
        self.cluster.revisions = revisions.Revisions(st, self.node.netns, self.cluster.pids)
        self.cluster.services_sync.sync_now()
        bin_dir = config.BIN_DIR
        control = [str(bin_dir / "remora-control"), "--source", "files", "--dir", str(st.objects),
                   "--ca-dir", str(st.ca), "--token-key", str(st.token_key),
                   # pods dial the control plane at the bridge address: it must be in the cert
                   "--serving-ip", str(netns.GATEWAY), "--monitoring-address", str(netns.GATEWAY),
                   "--monitoring-port", str(MONITORING_PORT)]
        injector = [str(bin_dir / "remora-injector"), "--addr", "127.0.0.1", "--port", str(port),
                    "--self-signed-dir", str(st.injector), "--mesh-config", str(st.mesh_config),
                    "--without-api-server", "--namespaces", str(st.namespaces_file),
                    "--metrics-addr", "127.0.0.1", "--metrics-port", str(self.injector_monitoring)]
        self.components = [
            Component("control-plane", control, st.system / "control-plane.log", self.cluster.pids,
                      self.node.netns),
            Component("injector", injector, st.system / "injector.log", self.cluster.pids),
            Component("cluster-dns", nodedns.command(st.objects), st.system / "cluster-dns.log",
                      self.cluster.pids, self.node.netns),
        ]
        for c in self.components:
            c.start()
        await self.serve()

    async def serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/status", self.status),
            web.post("/apply", self.apply),
            web.post("/delete", self.delete),
            web.post("/exec", self.exec),
            web.post("/rollout", self.rollout),
            web.post("/injector", self.injector),
            web.post("/shutdown", self.shutdown),
            web.post("/revisions", self.add_revision),
            web.delete("/revisions/{name}", self.remove_revision),
            web.get("/monitoring/{rev}/{path:.*}", self.monitoring),
        ])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        with contextlib.suppress(FileNotFoundError):
            self.state.socket.unlink()
        site = web.UnixSite(self.runner, str(self.state.socket))
        await site.start()
        os.chmod(self.state.socket, 0o600)
        log.info("local cluster %s up: node %s, state %s", self.prefix, self.node.netns, self.state.root)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "prefix": self.prefix, "pid": os.getpid()})

    async def status(self, request: web.Request) -> web.Response:
        out = self.cluster.status()
        out["components"] = [c.status() for c in self.components]
        out["revisions"] = self.cluster.revisions.view() if self.cluster.revisions else []
        out["node"] = {"netns": self.node.netns, "bridge": f"br0 {netns.GATEWAY}/16",
                       "webhook": self.cluster.webhook_url,
                       "controlPlane": f"{netns.GATEWAY}:{DISCOVERY_PORT}",
                       "monitoring": f"{netns.GATEWAY}:{MONITORING_PORT}",  # remoractl's target
                       "controlPlaneMonitoring": f"http://{netns.GATEWAY}:{MONITORING_PORT}",
                       "injectorMonitoring": f"http://127.0.0.1:{self.injector_monitoring}"}
        return web.json_response(out)

    async def _objects(self, request: web.Request) -> list[dict[str, Any]]:
        body = await request.json()
        ns = body.get("namespace") or manifests.DEFAULT_NAMESPACE
        return [manifests.normalize(o, ns, f"object {i + 1}") for i, o in enumerate(body["objects"])]

    async def apply(self, request: web.Request) -> web.Response:
        return await self._change(request, self.cluster.apply)

    async def delete(self, request: web.Request) -> web.Response:
        return await self._change(request, self.cluster.delete)

    async def _change(self, request: web.Request, action: Any) -> web.Response:
        try:
            objs = await self._objects(request)
        except ManifestError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"results": await action(objs)})

    async def exec(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            argv, env = self.cluster.exec_command(body["namespace"], body["pod"],
                                                  body.get("container"), body["argv"])
        except ManifestError as e:
            return web.json_response({"error": str(e)}, status=404)
        return web.json_response({"argv": argv, "env": env})

    async def add_revision(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            assert self.cluster.revisions is not None
            rev = self.cluster.revisions.add(str(body.get("name", "")), body.get("version") or None)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(rev.view())

    async def remove_revision(self, request: web.Request) -> web.Response:
        try:
            assert self.cluster.revisions is not None
            await self.cluster.revisions.remove(request.match_info["name"])
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=404)
        return web.json_response({"ok": True})

    async def rollout(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            out = self.cluster.rollout(body["action"], body["kind"], body["namespace"],
                                       body["name"], int(body.get("toRevision") or 0))
        except ManifestError as e:
            return web.json_response({"error": str(e)}, status=404)
        return web.json_response(out)

    async def injector(self, request: web.Request) -> web.Response:
        """Mesh-config overrides for the injector (a new proxy release, in effect), then restart it."""
        body = await request.json()
        overrides = body.get("meshConfig") or {}
        if not isinstance(overrides, dict):
            return web.json_response({"error": "meshConfig must be a mapping"}, status=400)
        write_mesh_config(self.state, overrides)
        injector = next(c for c in self.components if c.name == "injector")
        await injector.restart()
        await asyncio.sleep(0.5)  # the old listener is gone; wait for the new one
        try:
            await self.cluster._wait_webhook(timeout=20)
        except admission.WebhookUnavailable as e:
            return web.json_response({"error": f"the injector did not come back with these "
                                               f"overrides: {e}"}, status=400)
        return web.json_response({"meshConfig": yaml.safe_load(self.state.mesh_config.read_text())})

    async def monitoring(self, request: web.Request) -> web.Response:
        """A control plane's monitoring port (it listens in the node namespace), for remoractl."""
        rev, path = request.match_info["rev"], request.match_info["path"]
        if rev == "default":
            base = f"http://{netns.GATEWAY}:{MONITORING_PORT}"
        else:
            found = self.cluster.revisions.running.get(rev) if self.cluster.revisions else None
            if found is None:
                return web.json_response({"error": f"no revision {rev!r} in this local cluster"}, status=404)
            base = found[0].view()["controlPlaneMonitoring"]
        query = f"?{request.query_string}" if request.query_string else ""
        status, body = await revisions.fetch_in_netns(self.node.netns, f"{base}/{path}{query}")
        return web.Response(status=status, body=body, content_type="application/json")

    async def shutdown(self, request: web.Request) -> web.Response:
        await self.stop()
        return web.json_response({"ok": True})

    async def stop(self) -> None:
        if self.stopped.is_set():
            return
        log.info("stopping: pods, then the control plane and the injector")
        if self.cluster is not None:
            await self.cluster.shutdown()
            if self.cluster.revisions is not None:
                await self.cluster.revisions.stop_all()
        await asyncio.gather(*(c.stop() for c in self.components), return_exceptions=True)
        if self.node is not None:
            await asyncio.to_thread(self.node.destroy)
        self.stopped.set()


async def run(state: config.StateDir, prefix: str) -> None:
    daemon = Daemon(state, prefix)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(daemon.stop()))
    try:
        await daemon.start()
        await daemon.stopped.wait()
        await asyncio.sleep(0.2)  # let the /shutdown answer go out
    finally:
        await daemon.stop()
        if daemon.runner is not None:
            await daemon.runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local_cluster.daemon")
    p.add_argument("--dir", required=True, help="state directory")
    p.add_argument("--prefix", default=config.DEFAULT_PREFIX, help="network namespace prefix")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = config.StateDir(Path(args.dir))
    state.system.mkdir(parents=True, exist_ok=True)
    state.daemon_pid.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(run(state, args.prefix))
    except Exception:
        log.exception("the local cluster daemon failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
