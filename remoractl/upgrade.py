"""remoractl upgrade: restart every workload whose pods run an outdated proxy, in health-gated waves.

    remoractl upgrade [-n NS] [-l KEY=VALUE,...] [--max-unavailable N|N%] [--dry-run]

A pod's proxy is outdated when the version or template hash the injector stamped into its
``remora.dev/status`` differs from what the injector injects now (or, with ``--revision``, when
it belongs to another revision: then that revision's injector says what is current and its control
plane is where the new proxies must be SYNCED). Deployments, StatefulSets and DaemonSets that own such pods are
restarted as ``kubectl rollout restart`` does, a wave at a time; a wave holds at most
``--max-unavailable`` outdated pods. ReplicaSets without a Deployment, bare pods and Jobs are
reported, never restarted.

After each wave, every restarted workload must pass three gates before the next wave starts:
its rollout completes (new pods Ready) within ``--timeout``; every new pod's proxy is SYNCED
with the control plane on the expected version; and over ``--observe`` seconds the new pods'
inbound 5xx rate (from their own :15090 metrics) is not worse than the old pods' was. A workload
that fails a gate is rolled back (``rollout undo``), the pods that failed are listed with the
reason, and the command exits 1 without touching the next waves.

The cluster is found as by every live command (``remoractl/target.py``): the local cluster when
it is up, else the kubeconfig's context (``--kubeconfig``, ``--context``), whose control plane is
reached by a port-forward; ``--cluster`` forces one. Before anything is restarted the control
plane must answer (gate 2 needs it); ``--control-plane-url`` names it explicitly.

Progress is kept in a state file (``--state-file``): run the command again after an
interruption and it judges the wave that was in flight before going on. Exit codes: 0 upgraded
(or nothing to do), 1 a gate failed and was rolled back, 2 bad usage or unreachable cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from control_plane.api.annotations import DEFAULT_REVISION
from remoractl import upgrade_plan as up
from remoractl.target import (
    Target,
    TargetError,
    add_target_args,
    from_kubeconfig,
    from_local_cluster,
    from_url,
    resolve,
)
from remoractl.upgrade_backends import Backend, KubeBackend, LocalBackend
from remoractl.upgrade_plan import PodInfo, UpgradeError, Workload

POLL = 1.0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("upgrade", help="restart workloads with an outdated proxy, health-gated",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    p.add_argument("-l", "--selector", default="", help="only pods with these labels: k=v[,k=v]")
    p.add_argument("--max-unavailable", default="1",
                   help="outdated pods restarted per wave: N or N%% of them (default 1)")
    p.add_argument("--dry-run", action="store_true", help="show the plan and the waves, change nothing")
    p.add_argument("--revision", default="",
                   help="upgrade to this revision: its injector's mesh config is the target and its control "
                        "plane the one pods must be SYNCED on; pods of any other revision are outdated")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a wave may take to become Ready and SYNCED (default 300)")
    p.add_argument("--observe", type=float, default=10.0,
                   help="seconds of traffic to compare error rates over (default 10)")
    p.add_argument("--error-tolerance", type=float, default=0.01,
                   help="how much higher (0.01 = 1 point) the new 5xx rate may be (default 0.01)")
    p.add_argument("--state-file", type=Path, help="resume state (default: under ~/.local/state/remora)")
    p.add_argument("--cluster", choices=("auto", "local", "kube"), default="auto",
                   help="whose workloads: auto: where the control plane was found (the local cluster "
                        "when one runs, else the kubeconfig's)")
    p.add_argument("--mesh-config", type=Path,
                   help="Kubernetes: read the injector's mesh config from this file instead")
    p.add_argument("--mesh-configmap",
                   help="Kubernetes: NAMESPACE/NAME of the injector's mesh ConfigMap (default "
                        "remora-system/remora-mesh, or remora-mesh-REV with --revision REV, as the chart names it)")
    add_target_args(p)
    return p


def _say(text: str) -> None:
    print(text, flush=True)


def parse_selector(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise UpgradeError(f"--selector {text!r}: accepted: KEY=VALUE[,KEY=VALUE] (equality only)")
        out[k] = v
    return out


def _cluster(args: argparse.Namespace) -> Target:
    """The cluster whose workloads are restarted, as a target (``--cluster``)."""
    if args.cluster == "local":
        local = from_local_cluster()
        if local is None:
            raise TargetError("no local cluster is running; start one with: remoractl local up")
        return local
    if args.cluster == "kube":
        return from_kubeconfig(args.kubeconfig, args.context, args.control_plane_namespace)
    # --control-plane-url names a control plane only; the workloads are where resolve() looks.
    return resolve(argparse.Namespace(**{**vars(args), "control_plane_url": None}))


def backend_for(args: argparse.Namespace) -> Backend:
    """The backend of the cluster to upgrade; its control plane must answer before anything else."""
    control = from_url(args.control_plane_url) if args.control_plane_url else None
    if control is not None:
        control.get("/version")
    cluster = _cluster(args)
    rev = args.revision if args.revision != DEFAULT_REVISION else ""
    if control is None:
        # A local revision's pods must be SYNCED on that revision's control plane.
        control = from_url(f"local:{rev}") if rev and cluster.state is not None else cluster
        control.get("/version")
    if cluster.state is not None:
        return LocalBackend(cluster.state, control)
    configmap = args.mesh_configmap or "remora-system/remora-mesh" + (f"-{rev}" if rev else "")
    return KubeBackend(cluster.api, configmap, control, args.mesh_config)


def run(args: argparse.Namespace) -> int:
    try:
        return Upgrade(backend_for(args), args).run()
    except (UpgradeError, TargetError) as e:
        print(f"remoractl upgrade: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("remoractl upgrade: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


@dataclasses.dataclass
class Failure:
    workload: Workload
    gate: str
    pods: list[tuple[str, str]]  # (pod, why)


class Upgrade:
    def __init__(self, backend: Backend, args: argparse.Namespace) -> None:
        self.b, self.args = backend, args
        self.selector = parse_selector(args.selector)
        up.parse_budget(args.max_unavailable)
        self.state_file: Path = args.state_file or up.default_state_file(backend.name)

    def _pods(self) -> list[PodInfo]:
        return self.b.pods(self.args.namespace, self.selector)

    def run(self) -> int:
        want = self.b.expected(self.args.revision)
        _say(f"target: proxy {want.proxy_version}, template {want.template_hash[:8]}"
             + (f", revision {want.revision}" if want.revision else ""))
        state = up.State.load(self.state_file)
        if state is not None and state.expected != dataclasses.asdict(want):
            _say(f"state file {self.state_file} is for another target; starting over")
            state = None
        state = state or up.State(dataclasses.asdict(want))
        pl = up.plan(self._pods(), want)
        for what, why in pl.reported:
            _say(f"  not restarted: {what}: {why}")
        inflight = [Workload(str(w["kind"]), str(w["namespace"]), str(w["name"]))
                    for w in state.inflight]
        todo = [w for w in pl.restart if w.id not in {i.id for i in inflight}]
        waves = up.waves(todo, self.args.max_unavailable) if todo else []
        _say(f"{pl.current} injected pod(s) already current; {len(todo)} workload(s) to restart "
             f"in {len(waves)} wave(s) of at most {self.args.max_unavailable} outdated pod(s)"
             + (f"; resuming {len(inflight)} in flight" if inflight else ""))
        for i, wave in enumerate(waves, 1):
            _say(f"  wave {i}: " + ", ".join(f"{w.id} ({len(w.pods)} pod(s): {w.why})" for w in wave))
        if self.args.dry_run:
            return 0
        if inflight:
            previous = {w["id"]: w.get("previous", "") for w in state.inflight}
            if not self._judge(inflight, previous, {}, want, state, "resumed wave"):
                return 1
        for i, wave in enumerate(waves, 1):
            before = {w.id: self._errors(self._pods_of(w)) for w in wave}
            previous = {w.id: self.b.restarted_at(w) for w in wave}
            state.inflight = [{"id": w.id, "kind": w.kind, "namespace": w.namespace, "name": w.name,
                               "previous": previous[w.id]} for w in wave]
            state.save(self.state_file)
            for w in wave:
                self.b.restart(w)
            _say(f"wave {i}/{len(waves)}: restarted {', '.join(w.id for w in wave)}")
            if not self._judge(wave, previous, before, want, state, f"wave {i}"):
                return 1
        self.state_file.unlink(missing_ok=True)
        left = up.plan(self._pods(), want)
        _say(f"upgrade complete: {len(todo) + len(inflight)} workload(s) restarted; "
             f"{left.current} injected pod(s) on proxy {want.proxy_version}"
             + (f"; {len(left.reported)} not restartable (listed above)" if left.reported else ""))
        return 0

    def _pods_of(self, w: Workload) -> list[PodInfo]:
        return [p for p in self._pods() if (p.owner_kind, p.namespace, p.owner_name)
                == (w.kind, w.namespace, w.name)]

    def _errors(self, pods: list[PodInfo]) -> tuple[float, float]:
        total = errors = 0.0
        for p in pods:
            samples = self.b.metrics(p)
            if isinstance(samples, dict):
                t, e = up.error_ratio(samples)
                total, errors = total + t, errors + e
        return total, errors

    def _judge(self, wave: list[Workload], previous: dict[str, str],
               before: dict[str, tuple[float, float]], want: up.Expected, state: up.State,
               label: str) -> bool:
        failures = self._gates(wave, before, want)
        if not failures:
            state.done += [w.id for w in wave]
            state.inflight = []
            state.save(self.state_file)
            _say(f"{label}: passed (Ready, SYNCED on {want.proxy_version}, error rate not worse)")
            return True
        for f in failures:
            self.b.undo(f.workload, previous.get(f.workload.id, ""))
        print(f"remoractl upgrade: {label} failed; rolled back "
              + ", ".join(f.workload.id for f in failures) + "; later waves were not started",
              file=sys.stderr)
        for f in failures:
            print(f"  {f.workload.id}: {f.gate}", file=sys.stderr)
            for pod, why in f.pods:
                print(f"    pod {pod}: {why}", file=sys.stderr)
        self.state_file.unlink(missing_ok=True)
        return False

    def _gates(self, wave: list[Workload], before: dict[str, tuple[float, float]],
               want: up.Expected) -> list[Failure]:
        deadline = time.monotonic() + self.args.timeout
        pending = {w.id: w for w in wave}
        failures: list[Failure] = []
        while pending:  # gate 1: the rollout completes
            for wid, w in list(pending.items()):
                done, stalled, msg = self.b.rollout(w)
                if done:
                    del pending[wid]
                elif stalled or time.monotonic() > deadline:
                    failures.append(Failure(w, f"rollout not complete ({msg})",
                                            [(p.name, p.reason) for p in self._pods_of(w) if not p.ready]))
                    del pending[wid]
            if pending:
                time.sleep(POLL)
        passed = [w for w in wave if w.id not in {f.workload.id for f in failures}]
        failures += self._synced(passed, want, deadline)
        passed = [w for w in passed if w.id not in {f.workload.id for f in failures}]
        if passed and self.args.observe > 0:  # gate 3: the error rate
            start = {w.id: self._errors(self._pods_of(w)) for w in passed}
            time.sleep(self.args.observe)
            for w in passed:
                now = self._errors(self._pods_of(w))
                window = (now[0] - start[w.id][0], now[1] - start[w.id][1])
                base = before.get(w.id, (0.0, 0.0))
                if up.worse(base, window, self.args.error_tolerance):
                    failures.append(Failure(w, f"error rate {window[1] / window[0]:.1%} on the new pods "
                                               f"vs {base[1] / base[0] if base[0] else 0:.1%} before", []))
        return failures

    def _synced(self, wave: list[Workload], want: up.Expected, deadline: float) -> list[Failure]:
        """Gate 2: every new pod stamped as expected, its proxy SYNCED on the expected version."""
        problems: dict[str, list[tuple[str, str]]] = {}
        while True:
            problems = {}
            proxies = self.b.proxies()
            for w in wave:
                for p in self._pods_of(w):
                    why = up.outdated_because(p, want)
                    seen = proxies.get((p.namespace, p.name))
                    if why:
                        problems.setdefault(w.id, []).append((p.name, f"injected with {why}"))
                    elif seen is None:
                        problems.setdefault(w.id, []).append((p.name, "proxy not connected to the control plane"))
                    elif seen.get("status") != "SYNCED" or seen.get("proxy_version") != want.proxy_version:
                        problems.setdefault(w.id, []).append(
                            (p.name, f"proxy {seen.get('proxy_version')} is {seen.get('status')}"
                                     + (f": {seen['last_error']}" if seen.get("last_error") else "")))
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        return [Failure(w, "proxies not SYNCED on the expected version", problems[w.id])
                for w in wave if w.id in problems]
