"""What ``remoractl upgrade`` decides, as pure functions: which pods run an outdated proxy, which
workloads own them, which of those can be restarted, how they are packed into waves, whether a
wave's error rate got worse, and the resume state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from control_plane.api import annotations as ann

RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
REV_LABEL = "remora.dev/rev"


class UpgradeError(RuntimeError):
    """A one-line, user-facing error."""


@dataclass(frozen=True)
class Expected:
    """What the injector injects now: a pod stamped otherwise runs an outdated proxy."""

    proxy_version: str
    template_hash: str
    revision: str = ""  # empty: any revision


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    owner_kind: str  # Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, or "" (a bare pod)
    owner_name: str
    ready: bool
    status: dict[str, Any]  # remora.dev/status, parsed ({} when not injected)
    labels: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why it is not Ready (phase, waiting reason, probe error)

    @property
    def injected(self) -> bool:
        return bool(self.status)


def parse_status(annotations: Mapping[str, str] | None) -> dict[str, Any]:
    raw = (annotations or {}).get(ann.STATUS_ANNOTATION)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"unparsable": raw}
    return value if isinstance(value, dict) else {"unparsable": raw}


def outdated_because(pod: PodInfo, want: Expected) -> str:
    """Why ``pod``'s proxy is outdated ("" when it is current or not injected)."""
    if not pod.injected:
        return ""
    s = pod.status
    reasons = []
    if s.get("proxyVersion") != want.proxy_version:
        reasons.append(f"proxy {s.get('proxyVersion') or '?'} (want {want.proxy_version})")
    if s.get("templateHash") != want.template_hash:
        reasons.append(f"template {str(s.get('templateHash') or '?')[:8]} "
                       f"(want {want.template_hash[:8]})")
    rev = pod.labels.get(REV_LABEL) or s.get("revision") or ""
    if want.revision and rev != want.revision:
        reasons.append(f"revision {rev or 'default'} (want {want.revision})")
    return ", ".join(reasons)


@dataclass
class Workload:
    kind: str
    namespace: str
    name: str
    pods: list[str] = field(default_factory=list)
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"


@dataclass
class Plan:
    restart: list[Workload]
    reported: list[tuple[str, str]]  # (what, why it is not restarted)
    current: int  # injected pods already on the expected proxy


def plan(pods: Iterable[PodInfo], want: Expected) -> Plan:
    """Group outdated pods by owner; only Deployments, StatefulSets and DaemonSets are restarted."""
    owners: dict[tuple[str, str, str], Workload] = {}
    reported: list[tuple[str, str]] = []
    current = 0
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        why = outdated_because(pod, want)
        if not why:
            current += pod.injected
            continue
        where = f"pod {pod.namespace}/{pod.name}"
        if pod.owner_kind in RESTARTABLE:
            w = owners.setdefault((pod.owner_kind, pod.namespace, pod.owner_name),
                                  Workload(pod.owner_kind, pod.namespace, pod.owner_name, why=why))
            w.pods.append(pod.name)
        elif pod.owner_kind in ("Job", "CronJob"):
            reported.append((where, f"{why}; owned by Job {pod.owner_name}: Jobs are never "
                                    "restarted, it picks up the new proxy on its next run"))
        elif pod.owner_kind == "ReplicaSet":
            reported.append((where, f"{why}; owned by ReplicaSet {pod.owner_name} without a "
                                    "Deployment: delete the pod to have it recreated"))
        else:
            reported.append((where, f"{why}; a bare pod: recreate it to upgrade its proxy"))
    return Plan(sorted(owners.values(), key=lambda w: (w.namespace, w.kind, w.name)), reported,
                current)


def parse_budget(text: str) -> tuple[int, bool]:
    """``--max-unavailable``: (number, is_percent); raises UpgradeError naming the bad value."""
    raw = text.strip()
    percent = raw.endswith("%")
    digits = raw[:-1] if percent else raw
    if not digits.isdigit() or int(digits) < 1 or (percent and int(digits) > 100):
        raise UpgradeError(f"--max-unavailable {text!r}: accepted: a whole number >= 1 "
                           "or a percentage from 1% to 100%")
    return int(digits), percent


def waves(workloads: list[Workload], budget: str) -> list[list[Workload]]:
    """Pack workloads in order into waves whose pod count stays within ``--max-unavailable``.

    A percentage is of every outdated pod (rounded down, at least one); a workload larger than
    the budget gets a wave of its own (its own rollout strategy then bounds it).
    """
    n, percent = parse_budget(budget)
    total = sum(len(w.pods) for w in workloads)
    limit = max(1, math.floor(total * n / 100)) if percent else n
    out: list[list[Workload]] = []
    size = 0
    for w in workloads:
        if out and size + len(w.pods) <= limit:
            out[-1].append(w)
            size += len(w.pods)
        else:
            out.append([w])
            size = len(w.pods)
    return out


def error_ratio(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
    """(requests, 5xx) the proxy served inbound, from its own counters."""
    total = errors = 0.0
    for (metric, labels), value in samples.items():
        lab = dict(labels)
        inbound = ((metric == "remora_requests_total" and lab.get("direction") == "inbound")
                   or (metric == "istio_requests_total" and lab.get("reporter") == "destination"))
        if not inbound:
            continue
        total += value
        if lab.get("response_code", "")[:1] == "5":
            errors += value
    return total, errors


def worse(before: tuple[float, float], after: tuple[float, float], tolerance: float) -> bool:
    """True when the new pods' error rate exceeds the old pods' by more than ``tolerance``."""
    if after[0] <= 0:
        return False  # no traffic: nothing to judge
    old = before[1] / before[0] if before[0] else 0.0
    return after[1] / after[0] > old + tolerance


@dataclass
class State:
    """What survives an interruption: the target and the wave restarted but not yet judged."""

    expected: dict[str, str]
    inflight: list[dict[str, str]] = field(default_factory=list)  # {"id", "previous"}
    done: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            raw = json.loads(path.read_text())
            return cls(raw["expected"], list(raw.get("inflight") or []), list(raw.get("done") or []))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UpgradeError(f"{path}: not an upgrade state file ({e}); remove it to start over") from None


def default_state_file(target: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "remora" / f"upgrade-{target}.json"
