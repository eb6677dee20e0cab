"""One pod's life, as a kubelet runs it: sandbox, volumes, init containers in order, native
sidecars gated on their startup probe, app containers, probes, restarts with backoff, and
termination (apps first, then sidecars in reverse order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from control_plane.api import annotations as ann
from local_cluster import launcher, podenv, probes, volumes
from local_cluster.podenv import SpecError
from local_cluster.procs import PidRecords

log = logging.getLogger("remora.local.pods")

INIT, SIDECAR, APP = "init", "sidecar", "app"
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
BACKOFF_RESET_AFTER = 10.0  # a container that ran this long starts its backoff over
DEFAULT_GRACE = 10.0  # Kubernetes' default is 30 s; a local cluster wants quicker teardowns


class Host(Protocol):
    """What a pod needs from the cluster around it."""

    node_netns: str
    host_ip: str
    pids: PidRecords

    def configmaps(self, namespace: str) -> Mapping[str, Mapping[str, str]]: ...
    def mint(self, pod: dict[str, Any], audience: str, ttl: int) -> str: ...
    def changed(self, runner: PodRunner) -> None: ...


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    kind: str
    state: str = "waiting"  # waiting, running, terminated
    reason: str = "PodInitializing"
    exit_code: int | None = None
    restarts: int = 0
    ready: bool = False
    pid: int | None = None
    probe_error: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)  # startup probe passed once
    launched: asyncio.Event = field(default_factory=asyncio.Event)  # postStart hook done once

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "state": self.state, "reason": self.reason,
                "exitCode": self.exit_code, "restartCount": self.restarts, "ready": self.ready,
                "started": self.started.is_set(), "probeError": self.probe_error}


# The local cluster runs every image from this checkout. The proxy container of a pod the injector
# stamped with proxy version X runs as version X, so that a "next" release can be rehearsed by
# changing the injector's proxyVersion alone (docs/upgrade.md).
PROXY_CONTAINER, VERSION_ENV = "remora-proxy", "REMORA_VERSION_OVERRIDE"


def stamped_version(pod: dict[str, Any]) -> str:
    """The proxy version the injector stamped into ``remora.dev/status`` ("" when none)."""
    raw = (pod["metadata"].get("annotations") or {}).get(ann.STATUS_ANNOTATION)
    try:
        version = json.loads(raw).get("proxyVersion", "") if raw else ""
    except (ValueError, AttributeError):
        return ""
    return version if isinstance(version, str) else ""


def image_env(pod: dict[str, Any], container: str) -> dict[str, str]:
    version = stamped_version(pod) if container == PROXY_CONTAINER else ""
    return {VERSION_ENV: version} if version else {}


def _signal_group(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


class PodRunner:
    def __init__(self, host: Host, pod: dict[str, Any], pod_dir: Path,
                 add_sandbox: Callable[[], Awaitable[tuple[str, str]]],
                 remove_sandbox: Callable[[], Awaitable[None]]) -> None:
        self.host = host
        self.pod = pod
        self.dir = pod_dir
        self._add_sandbox, self._remove_sandbox = add_sandbox, remove_sandbox
        meta, spec = pod["metadata"], pod["spec"]
        self.namespace, self.name = meta["namespace"], meta["name"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
        self.netns = ""
        self.ip = ""
        self.phase = "Pending"
        self.reason = "ContainerCreating"
        self.containers: dict[str, Container] = {}
        for c in spec.get("initContainers") or []:
            kind = SIDECAR if c.get("restartPolicy") == "Always" else INIT
            self.containers[c["name"]] = Container(c["name"], c, kind)
        for c in spec["containers"]:
            self.containers[c["name"]] = Container(c["name"], c, APP)
        self.uids = {name: podenv.run_as(spec, c.spec) for name, c in self.containers.items()}
        for c in self.containers.values():  # a probe on a port that does not exist: refuse now
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if c.spec.get(kind):
                    probes.parse(c.spec[kind], c.spec, "0.0.0.0")
        self.dirs: dict[str, Path] | None = None  # set once the volumes exist
        self.stopping = False
        self.terminating = False  # deleted: out of the endpoints, containers still running
        self.deleted_at = ""
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.task: asyncio.Task | None = None
        self.tasks: list[asyncio.Task] = []  # one per long-running container
        self.created = time.time()

    # ---- reporting -------------------------------------------------------------------------

    def _changed(self) -> None:
        self.host.changed(self)

    @property
    def ready(self) -> bool:
        watched = [c for c in self.containers.values() if c.kind != INIT]
        return (self.phase == "Running" and not self.terminating
                and all(c.ready for c in watched))

    def proxy_version(self) -> str:
        return stamped_version(self.pod)

    def status(self) -> dict[str, Any]:
        watched = [c for c in self.containers.values() if c.kind != INIT]
        waiting = [c.reason for c in self.containers.values()
                   if c.state == "waiting" and c.reason in ("CrashLoopBackOff",
                                                           "CreateContainerConfigError")]
        return {
            "phase": self.phase,
            "reason": waiting[0] if waiting else self.reason,
            "podIP": self.ip,
            "netns": self.netns,
            "ready": f"{sum(c.ready for c in watched)}/{len(watched)}",
            "restarts": sum(c.restarts for c in self.containers.values()),
            "proxyVersion": self.proxy_version(),
            "containers": [c.as_dict() for c in self.containers.values()],
            "age": time.time() - self.created,
        }

    def k8s_status(self) -> dict[str, Any]:
        """The pod's status as an API server would store it (the control plane reads podIP)."""
        ready = "True" if self.ready else "False"
        return {
            "phase": self.phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}] if self.ip else [],
            "hostIP": self.host.host_ip,
            "conditions": [{"type": "Ready", "status": ready},
                           {"type": "ContainersReady", "status": ready}],
            "containerStatuses": [
                {"name": c.name, "ready": c.ready, "restartCount": c.restarts,
                 "started": c.started.is_set()}
                for c in self.containers.values() if c.kind == APP
            ],
        }

    # ---- running -----------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run_guarded(), name=f"pod {self.namespace}/{self.name}")

    async def _run_guarded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the pod fails, the daemon goes on
            log.exception("pod %s/%s failed", self.namespace, self.name)
            self.phase, self.reason = "Failed", f"{type(e).__name__}: {e}"
            self._changed()

    async def _run(self) -> None:
        self.netns, self.ip = await self._add_sandbox()
        self._changed()
        await self._prepare_volumes()
        self.tasks.append(asyncio.create_task(self._refresh_volumes()))
        for c in self.containers.values():
            if self.stopping:
                return
            if c.kind == INIT:
                self.reason = f"Init:{c.name}"
                if not await self._run_to_completion(c):
                    self.phase, self.reason = "Failed", f"Init:{c.name} failed"
                    self._changed()
                    return
            elif c.kind == SIDECAR:
                self.reason = f"Init:{c.name}"
                self.tasks.append(asyncio.create_task(self._keep_running(c)))
                await c.started.wait()
        self.phase, self.reason = "Running", ""
        self._changed()
        apps = []
        for c in self.containers.values():
            if c.kind == APP:
                apps.append(asyncio.create_task(self._keep_running(c)))
                self.tasks.append(apps[-1])
                await c.launched.wait()  # as the kubelet: postStart before the next container
        await asyncio.gather(*apps)
        if self.stopping:
            return
        failed = any(c.exit_code for c in self.containers.values() if c.kind == APP)
        self.phase, self.reason = ("Failed", "Error") if failed else ("Succeeded", "Completed")
        self._changed()
        await self._terminate([c for c in self.containers.values() if c.kind == SIDECAR][::-1])

    async def _prepare_volumes(self) -> None:
        """Retry while something is missing (the CA root before the control plane made it)."""
        while not self.stopping:
            try:
                self.dirs = self._write_volumes()
                return
            except SpecError as e:
                self.reason = f"CreateContainerConfigError: {e}"
                self._changed()
                await asyncio.sleep(1)

    def _write_volumes(self) -> dict[str, Path]:
        return volumes.prepare(self.pod["spec"], self.dir / "volumes",
                               self.host.configmaps(self.namespace),
                               lambda aud, ttl: self.host.mint(self.pod, aud, ttl), self.uids)

    async def _refresh_volumes(self) -> None:
        """Re-mint tokens before they expire and pick up ConfigMap changes, as the kubelet does."""
        interval = volumes.refresh_interval(self.pod["spec"])
        while not self.stopping:
            await asyncio.sleep(interval)
            try:
                self._write_volumes()
            except SpecError as e:  # keep what the containers have; say why it is stale
                log.warning("pod %s/%s: volumes not refreshed: %s", self.namespace, self.name, e)

    def _launch_argv(self, c: Container) -> tuple[list[str], dict[str, str]]:
        facts = podenv.facts_of(self.pod, self.ip, self.host.host_ip, self.host.node_netns)
        env = podenv.container_env(c.spec, facts, self.host.configmaps(self.namespace))
        env.update(image_env(self.pod, c.name))
        argv = podenv.container_argv(c.spec, env)
        uid, gid = self.uids[c.name]
        mounts = volumes.mounts(c.spec, self.dirs)  # type: ignore[arg-type]  # made before launch
        cmd = launcher.command(self.netns, argv, mounts=mounts, uid=uid, gid=gid,
                               stash=str(self.dir / "stash" / c.name),
                               workdir=c.spec.get("workingDir"))
        return cmd, env

    def exec_command(self, container: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``argv`` in ``container``'s context (kubectl exec)."""
        c = self.containers[container]
        cmd, env = self._launch_argv(c)
        return [*cmd[: cmd.index("--") + 1], *argv], env

    async def _spawn(self, c: Container) -> asyncio.subprocess.Process | None:
        try:
            cmd, env = self._launch_argv(c)
        except SpecError as e:
            c.state, c.reason = "waiting", "CreateContainerConfigError"
            self._log_line(c, f"remora-local: cannot start container {c.name}: {e}")
            return None
        logfile = self.dir / "logs" / f"{c.name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=env, start_new_session=True)
        self.host.pids.record(proc.pid, f"{self.namespace}/{self.name}/{c.name}")
        c.state, c.reason, c.pid, c.exit_code = "running", "", proc.pid, None
        self.procs[c.name] = proc
        self._changed()
        return proc

    def _log_line(self, c: Container, text: str) -> None:
        logfile = self.dir / "logs" / f"{c.name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "a") as f:
            f.write(text + "\n")

    async def _reap(self, c: Container, proc: asyncio.subprocess.Process) -> int:
        rc = await proc.wait()
        self.host.pids.forget(proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)  # whatever the container left behind
        c.state, c.exit_code, c.ready, c.pid = "terminated", rc, False, None
        c.reason = "Completed" if rc == 0 else "Error"
        self.procs.pop(c.name, None)
        self._changed()
        return rc

    async def _run_to_completion(self, c: Container) -> bool:
        """A regular init container: retried with backoff unless restartPolicy is Never."""
        backoff = BACKOFF_START
        while not self.stopping:
            proc = await self._spawn(c)
            rc = await self._reap(c, proc) if proc else -1
            if rc == 0:
                return True
            if self.restart_policy == "Never" or self.stopping:
                return False
            c.restarts += 1
            c.state, c.reason = "waiting", "CrashLoopBackOff" if proc else c.reason
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        return False

    def _restarts(self, c: Container, rc: int) -> bool:
        policy = "Always" if c.kind == SIDECAR else self.restart_policy
        return policy == "Always" or (policy == "OnFailure" and rc != 0)

    async def _keep_running(self, c: Container) -> None:
        backoff = BACKOFF_START
        while not self.stopping:
            began = time.monotonic()
            proc = await self._spawn(c)
            if proc is None:
                rc = -1
            else:
                watch = asyncio.create_task(self._probe(c, proc))
                hook = asyncio.create_task(self._post_start(c, proc))
                rc = await self._reap(c, proc)
                for t in (watch, hook):
                    t.cancel()
            c.launched.set()
            if self.stopping or not self._restarts(c, rc):
                return
            if time.monotonic() - began > BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            c.restarts += 1
            c.state = "waiting"
            if proc is not None:
                c.reason = "CrashLoopBackOff"
            self._changed()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _post_start(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        hook = ((c.spec.get("lifecycle") or {}).get("postStart") or {}).get("exec")
        try:
            if hook and hook.get("command"):
                cmd, env = self.exec_command(c.name, list(hook["command"]))
                run = await asyncio.create_subprocess_exec(
                    *cmd, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                _, err = await run.communicate()
                if run.returncode != 0:
                    self._log_line(c, f"remora-local: postStart hook failed ({run.returncode}): "
                                      f"{err.decode(errors='replace').strip()}")
                    _signal_group(proc.pid, signal.SIGTERM)
        finally:
            c.launched.set()

    async def _probe(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        spec = c.spec
        startup = spec.get("startupProbe")
        if startup:
            p = probes.parse(startup, spec, self.ip)
            await asyncio.sleep(p.initial_delay)
            failures = 0
            while (err := await probes.check(p, self.host.node_netns)) is not None:
                failures += 1
                c.probe_error = f"startup probe: {err}"
                if failures >= p.failure_threshold:
                    self._log_line(c, f"remora-local: startup probe failed {failures} times, "
                                      f"restarting: {err}")
                    _signal_group(proc.pid, signal.SIGKILL)
                    return
                await asyncio.sleep(p.period)
        c.started.set()
        self._changed()
        await asyncio.gather(self._readiness(c), self._liveness(c, proc))

    async def _readiness(self, c: Container) -> None:
        probe = c.spec.get("readinessProbe")
        if not probe:
            c.ready = True
            self._changed()
            return
        p = probes.parse(probe, c.spec, self.ip)
        await asyncio.sleep(p.initial_delay)
        ok = fail = 0
        while True:
            err = await probes.check(p, self.host.node_netns)
            ok, fail = (ok + 1, 0) if err is None else (0, fail + 1)
            c.probe_error = f"readiness probe: {err}" if err else ""
            ready = c.ready
            if ok >= p.success_threshold:
                ready = True
            elif fail >= p.failure_threshold:
                ready = False
            if ready != c.ready:
                c.ready = ready
                self._changed()
            await asyncio.sleep(p.period)

    async def _liveness(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        probe = c.spec.get("livenessProbe")
        if not probe:
            return
        p = probes.parse(probe, c.spec, self.ip)
        await asyncio.sleep(p.initial_delay)
        fail = 0
        while True:
            err = await probes.check(p, self.host.node_netns)
            fail = 0 if err is None else fail + 1
            if fail >= p.failure_threshold:
                self._log_line(c, f"remora-local: liveness probe failed, restarting: {err}")
                _signal_group(proc.pid, signal.SIGTERM)
                return
            await asyncio.sleep(p.period)

    # ---- stopping ----------------------------------------------------------------------------

    async def _terminate(self, group: list[Container]) -> None:
        """SIGTERM the group's processes, SIGKILL what is left after the grace period."""
        procs = [self.procs[c.name] for c in group if c.name in self.procs]
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        if procs:
            _, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in procs],
                                            timeout=self.grace)
            for proc in procs:
                if proc.returncode is None:
                    _signal_group(proc.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=2)

    async def stop(self) -> None:
        """Terminate apps, then sidecars (reverse order), then remove the sandbox and files."""
        self.stopping = True
        apps = [c for c in self.containers.values() if c.kind in (APP, INIT)]
        await self._terminate(apps)
        await self._terminate([c for c in self.containers.values() if c.kind == SIDECAR][::-1])
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._remove_sandbox()
        volumes.remove(self.dir)
