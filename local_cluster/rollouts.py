"""Workload controllers: Deployments, StatefulSets and DaemonSets turned into pods, with revisions.

What Kubernetes' controllers do, reduced to one node:

- every distinct pod template is a revision (a ReplicaSet, named by its template hash); the
  Deployment keeps the last ``revisionHistoryLimit`` of them, so ``rollout undo`` can go back;
- a Deployment rolls out with ``maxSurge``/``maxUnavailable`` gated on readiness: new pods are
  created up to replicas + maxSurge, old pods are removed only while at least
  replicas - maxUnavailable pods stay Ready (``plan_rolling``, a pure function);
- a StatefulSet replaces its pods one at a time from the highest ordinal down, each only after
  the others are Ready (stable names: ``<name>-<ordinal>``);
- a DaemonSet (one node here: one pod) is replaced as maxUnavailable 1, maxSurge 0 does;
- ``rollout restart`` sets the pod-template annotation ``kubectl.kubernetes.io/restartedAt``,
  exactly as kubectl does, which makes a new revision.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from local_cluster import manifests
from local_cluster.manifests import HASH_LABEL, WORKLOAD_KINDS, ManifestError
from local_cluster.store import Key, now_rfc3339

__all__ = ["HASH_LABEL", "WORKLOAD_KINDS", "Controller", "PodView", "Step", "plan_ordered", "plan_rolling"]

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
DEFAULT_HISTORY = 10
DEFAULT_PROGRESS_DEADLINE = 600


@dataclass(frozen=True)
class PodView:
    """What a controller needs to know about one of its pods."""

    name: str
    hash: str
    ready: bool


@dataclass(frozen=True)
class Step:
    create: int = 0
    delete: tuple[str, ...] = ()


def scaled(value: Any, replicas: int, round_up: bool, what: str) -> int:
    """An int-or-percent rollout parameter as a pod count (Kubernetes' rounding)."""
    if isinstance(value, bool):
        raise ManifestError(f"{what}: {value!r} is neither a number nor a percentage")
    if isinstance(value, int):
        if value < 0:
            raise ManifestError(f"{what}: {value} must not be negative")
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        exact = int(value[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    raise ManifestError(f"{what}: {value!r} is neither a number nor a percentage such as 25%")


def rolling_params(kind: str, spec: dict[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as pod counts, with each kind's defaults."""
    strategy = spec.get("strategy" if kind == "Deployment" else "updateStrategy") or {}
    if kind == "Deployment" and strategy.get("type") == "Recreate":
        return 0, replicas
    rolling = strategy.get("rollingUpdate") or {}
    surge_default, unavailable_default = ("25%", "25%") if kind == "Deployment" else (0, 1)
    surge = scaled(rolling.get("maxSurge", surge_default), replicas, True, "maxSurge")
    unavailable = scaled(rolling.get("maxUnavailable", unavailable_default), replicas, False,
                         "maxUnavailable")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # Kubernetes refuses both zero; a rollout must be able to move
    return surge, unavailable


def plan_rolling(replicas: int, surge: int, unavailable: int, new_hash: str,
                 pods: list[PodView]) -> Step:
    """One step of a rolling update; call again whenever readiness changes."""
    new = [p for p in pods if p.hash == new_hash]
    old = [p for p in pods if p.hash != new_hash]
    create = max(0, min(replicas - len(new), replicas + surge - len(pods)))
    delete: list[str] = []
    # Losing an unready pod costs no availability; a Ready one only while enough stay Ready.
    budget = sum(p.ready for p in pods) - (replicas - unavailable)
    for p in sorted(old, key=lambda p: (p.ready, p.name)):
        if not p.ready:
            delete.append(p.name)
        elif budget > 0:
            delete.append(p.name)
            budget -= 1
    extra = len(new) - replicas  # scaled down: newest names go first, unready before ready
    for p in sorted(new, key=lambda p: (p.ready, -_index(p.name)))[:max(0, extra)]:
        delete.append(p.name)
    return Step(create, tuple(delete))


def plan_ordered(replicas: int, new_hash: str, pods: dict[int, PodView]) -> tuple[list[int], list[str]]:
    """A StatefulSet step: (ordinals to create, pod names to delete).

    Missing ordinals are created lowest first, each once the ones below are Ready; an outdated
    pod is deleted (to be recreated) highest first, only when every pod is Ready.
    """
    for i in range(replicas):
        if i not in pods:
            below_ready = all(pods[j].ready for j in range(i) if j in pods)
            return ([i] if below_ready else []), []
    extra = sorted((i for i in pods if i >= replicas), reverse=True)
    if extra:
        return [], [pods[extra[0]].name]
    if not all(p.ready for p in pods.values()):
        return [], []
    stale = sorted((i for i, p in pods.items() if p.hash != new_hash), reverse=True)
    return [], ([pods[stale[0]].name] if stale else [])


def _index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("spec") or {}).get("template") or {}


def replicas_of(obj: dict[str, Any]) -> int:
    if obj["kind"] == "DaemonSet":
        return 1  # one node
    return int((obj.get("spec") or {}).get("replicas", 1))


@dataclass
class Revision:
    number: int
    hash: str
    template: dict[str, Any]
    cause: str = ""


@dataclass
class History:
    revisions: list[Revision] = field(default_factory=list)
    progressed_at: float = field(default_factory=time.monotonic)
    last_counts: tuple[int, int, int] = (0, 0, 0)

    @property
    def current(self) -> Revision:
        return self.revisions[-1]

    def record(self, template: dict[str, Any], limit: int, cause: str) -> Revision:
        """The revision for ``template``: an earlier one comes back with a new number."""
        h = manifests.template_hash(template)
        if self.revisions and self.revisions[-1].hash == h:
            return self.revisions[-1]
        number = (self.revisions[-1].number + 1) if self.revisions else 1
        self.revisions = [r for r in self.revisions if r.hash != h]
        self.revisions.append(Revision(number, h, copy.deepcopy(template), cause))
        self.revisions = self.revisions[-(limit + 1):]
        self.progressed_at = time.monotonic()
        return self.revisions[-1]


class Pods(Protocol):
    """What the controllers need from the pods reconciler."""

    def pods_of(self, kind: str, namespace: str, name: str) -> list[PodView]: ...
    def is_terminating(self, namespace: str, name: str) -> bool: ...
    async def create_pod(self, pod: dict[str, Any]) -> list[str]: ...
    def delete_pod_soon(self, namespace: str, name: str) -> None: ...


class Controller:
    """Reconciles every workload in the store towards its current revision."""

    def __init__(self, get: Callable[[Key], dict[str, Any] | None],
                 put: Callable[[dict[str, Any]], Any], pods: Pods) -> None:
        self._get, self._put, self.pods = get, put, pods
        self.histories: dict[Key, History] = {}

    # ---- changes from the store ---------------------------------------------------------------

    def observe(self, obj: dict[str, Any], cause: str = "") -> Revision:
        """Record the workload's template as a revision (called on every write of it)."""
        history = self.histories.setdefault(manifests.key(obj), History())
        limit = int((obj.get("spec") or {}).get("revisionHistoryLimit", DEFAULT_HISTORY))
        rev = history.record(template_of(obj), limit, cause)
        obj["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = str(rev.number)
        return rev

    def forget(self, key: Key) -> None:
        self.histories.pop(key, None)

    # ---- one reconcile pass -------------------------------------------------------------------

    async def reconcile(self, obj: dict[str, Any]) -> list[str]:
        """Create and delete what this step allows; returns admission warnings."""
        kind, ns, name = manifests.key(obj)
        history = self.histories.get(manifests.key(obj)) or History()
        if not history.revisions:
            self.observe(obj)
            history = self.histories[manifests.key(obj)]
        h = history.current.hash
        replicas = replicas_of(obj)
        pods = self.pods.pods_of(kind, ns, name)
        warnings: list[str] = []
        if kind == "StatefulSet":
            by_ordinal = {_index(p.name): p for p in pods}
            create, delete = plan_ordered(replicas, h, by_ordinal)
            for i in create:
                if not self.pods.is_terminating(ns, f"{name}-{i}"):  # stable name: wait for the old one
                    warnings += await self.pods.create_pod(manifests.pod_for(obj, f"{name}-{i}", h))
        else:
            surge, unavailable = rolling_params(kind, obj.get("spec") or {}, replicas)
            step = plan_rolling(replicas, surge, unavailable, h, pods)
            taken = {_index(p.name) for p in pods if p.hash == h}
            i = 0
            for _ in range(step.create):
                while i in taken:
                    i += 1
                taken.add(i)
                warnings += await self.pods.create_pod(manifests.pod_for(obj, f"{name}-{h}-{i}", h))
            delete = list(step.delete)
        for pod in delete:
            self.pods.delete_pod_soon(ns, pod)
        self._note_progress(obj, history)
        return warnings

    def _note_progress(self, obj: dict[str, Any], history: History) -> None:
        s = self.status(obj)
        counts = (s["updatedReplicas"], s["readyReplicas"], s["replicas"])
        if counts != history.last_counts:
            history.last_counts, history.progressed_at = counts, time.monotonic()

    # ---- rollout actions ----------------------------------------------------------------------

    def restart(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``kubectl rollout restart``: a new pod-template annotation, hence a new revision."""
        obj = copy.deepcopy(obj)
        tmeta = obj["spec"]["template"].setdefault("metadata", {})
        tmeta.setdefault("annotations", {})[RESTARTED_AT] = now_rfc3339(precise=True)
        self.observe(obj, cause="rollout restart")
        self._put(obj)
        return obj

    def undo(self, obj: dict[str, Any], to_revision: int = 0) -> tuple[dict[str, Any], int]:
        """``kubectl rollout undo``: the template of revision ``to_revision`` (0: the previous)."""
        history = self.histories.get(manifests.key(obj))
        revisions = history.revisions if history else []
        if to_revision:
            target = next((r for r in revisions if r.number == to_revision), None)
            if target is None:
                have = ", ".join(str(r.number) for r in revisions) or "none"
                raise ManifestError(f"{manifests.describe(obj)}: no revision {to_revision} "
                                    f"(revisions: {have})")
        elif len(revisions) < 2:
            raise ManifestError(f"{manifests.describe(obj)}: no previous revision to roll back to")
        else:
            target = revisions[-2]
        obj = copy.deepcopy(obj)
        obj["spec"]["template"] = copy.deepcopy(target.template)
        number = target.number
        self.observe(obj, cause=f"rollout undo to revision {number}")
        self._put(obj)
        return obj, number

    def history(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        history = self.histories.get(manifests.key(obj))
        return [{"revision": r.number, "hash": r.hash, "cause": r.cause}
                for r in (history.revisions if history else [])]

    def status(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Counts and kubectl's rollout status message for one workload."""
        kind, ns, name = manifests.key(obj)
        history = self.histories.get(manifests.key(obj))
        h = history.current.hash if history and history.revisions else ""
        pods = self.pods.pods_of(kind, ns, name)
        want = replicas_of(obj)
        updated = [p for p in pods if p.hash == h]
        ready = sum(p.ready for p in pods)
        updated_ready = sum(p.ready for p in updated)
        old = len(pods) - len(updated)
        noun = kind.lower()
        if len(updated) < want:
            msg = (f'Waiting for {noun} "{name}" rollout to finish: {len(updated)} out of {want} '
                   "new replicas have been updated...")
        elif old:
            msg = (f'Waiting for {noun} "{name}" rollout to finish: {old} old replicas are '
                   "pending termination...")
        elif updated_ready < want:
            msg = (f'Waiting for {noun} "{name}" rollout to finish: {updated_ready} of {want} '
                   "updated replicas are available...")
        else:
            msg = f'{noun} "{name}" successfully rolled out'
        complete = len(updated) == want and not old and updated_ready == want
        deadline = int((obj.get("spec") or {}).get("progressDeadlineSeconds",
                                                   DEFAULT_PROGRESS_DEADLINE))
        stalled = (not complete and history is not None
                   and time.monotonic() - history.progressed_at > deadline)
        if stalled:
            msg = f'{noun} "{name}" exceeded its progress deadline'
        return {"kind": kind, "namespace": ns, "name": name, "replicas": len(pods),
                "desired": want, "updatedReplicas": len(updated), "readyReplicas": ready,
                "updatedReadyReplicas": updated_ready,
                "revision": history.current.number if history and history.revisions else 0,
                "templateHash": h, "complete": complete, "stalled": stalled, "message": msg,
                "restartedAt": ((template_of(obj).get("metadata") or {}).get("annotations")
                                or {}).get(RESTARTED_AT, "")}

