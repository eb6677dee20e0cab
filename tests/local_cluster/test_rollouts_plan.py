"""Rollout planning, without pods: maxSurge/maxUnavailable arithmetic, readiness gating, the
StatefulSet order, revisions, restart and undo (the controller against a fake pods reconciler)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from local_cluster import manifests, rollouts
from local_cluster.manifests import ManifestError
from local_cluster.rollouts import PodView, plan_ordered, plan_rolling, rolling_params


def views(spec: str) -> list[PodView]:
    """'old:R old:N new:R' -> pods named by their position (R ready, N not)."""
    out = []
    for i, item in enumerate(spec.split()):
        h, state = item.split(":")
        out.append(PodView(f"w-{h}-{i}", h, state == "R"))
    return out


@pytest.mark.parametrize(("kind", "spec", "replicas", "want"), [
    ("Deployment", {}, 4, (1, 1)),  # 25% up, 25% down
    ("Deployment", {}, 1, (1, 0)),
    ("Deployment", {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "50%"}}}, 4, (0, 2)),
    ("Deployment", {"strategy": {"type": "Recreate"}}, 3, (0, 3)),
    ("Deployment", {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}, 2, (0, 1)),
    ("DaemonSet", {}, 1, (0, 1)),
])
def test_rolling_parameters_round_as_kubernetes_does(kind: str, spec: dict, replicas: int,
                                                     want: tuple[int, int]) -> None:
    assert rolling_params(kind, spec, replicas) == want


def test_bad_rolling_parameter_is_named() -> None:
    with pytest.raises(ManifestError, match="maxSurge: 'lots' is neither a number nor a percentage"):
        rolling_params("Deployment", {"strategy": {"rollingUpdate": {"maxSurge": "lots"}}}, 2)


def test_one_replica_surges_then_removes_the_old_pod_only_once_the_new_is_ready() -> None:
    assert plan_rolling(1, 1, 0, "new", views("old:R")) == rollouts.Step(1, ())
    assert plan_rolling(1, 1, 0, "new", views("old:R new:N")) == rollouts.Step(0, ())
    assert plan_rolling(1, 1, 0, "new", views("old:R new:R")) == rollouts.Step(0, ("w-old-0",))


def test_max_unavailable_bounds_how_many_ready_pods_go_at_once() -> None:
    step = plan_rolling(4, 0, 2, "new", views("old:R old:R old:R old:R"))
    assert step.create == 0 and len(step.delete) == 2
    # two old left (ready), two new not ready yet: nothing more may go, nothing more fits
    assert plan_rolling(4, 0, 2, "new", views("old:R old:R new:N new:N")) == rollouts.Step(0, ())
    step = plan_rolling(4, 0, 2, "new", views("old:R old:R new:R new:R"))
    assert step == rollouts.Step(0, ("w-old-0", "w-old-1"))


def test_unready_old_pods_go_first_and_cost_nothing() -> None:
    step = plan_rolling(2, 0, 0, "new", views("old:N old:R"))
    assert step.delete == ("w-old-0",)


def test_scaling_down_the_current_revision_drops_the_highest_index() -> None:
    pods = [PodView("w-h-0", "h", True), PodView("w-h-1", "h", True), PodView("w-h-2", "h", True)]
    assert plan_rolling(1, 1, 0, "h", pods).delete == ("w-h-2", "w-h-1")


def test_statefulset_creates_in_order_and_replaces_from_the_top() -> None:
    r = PodView
    assert plan_ordered(3, "h", {}) == ([0], [])
    assert plan_ordered(3, "h", {0: r("s-0", "h", False)}) == ([], [])
    assert plan_ordered(3, "h", {0: r("s-0", "h", True)}) == ([1], [])
    old = {i: r(f"s-{i}", "old", True) for i in range(3)}
    assert plan_ordered(3, "h", old) == ([], ["s-2"])
    old[2] = r("s-2", "h", False)
    assert plan_ordered(3, "h", old) == ([], [])  # the replaced one is not Ready yet


class FakePods:
    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.ready: set[str] = set()
        self.deleted: list[str] = []

    def pods_of(self, kind: str, namespace: str, name: str) -> list[PodView]:
        return [PodView(n, p["metadata"]["labels"][rollouts.HASH_LABEL], n in self.ready)
                for n, p in sorted(self.pods.items())]

    def is_terminating(self, namespace: str, name: str) -> bool:
        return False

    async def create_pod(self, pod: dict[str, Any]) -> list[str]:
        self.pods[pod["metadata"]["name"]] = pod
        return []

    def delete_pod_soon(self, namespace: str, name: str) -> None:
        self.pods.pop(name)
        self.deleted.append(name)


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, command: [sleep, infinity]}]}
"""


def test_restart_makes_a_revision_rolls_out_and_undo_goes_back() -> None:
    (dep,) = manifests.load_text(DEPLOYMENT, "d.yaml", "demo")
    store: dict[tuple, dict] = {}
    pods = FakePods()
    ctl = rollouts.Controller(store.get, lambda o: store.__setitem__(manifests.key(o), o), pods)

    def settle(obj: dict[str, Any]) -> None:
        for _ in range(10):
            asyncio.run(ctl.reconcile(obj))
            pods.ready = set(pods.pods)

    ctl.observe(dep)
    settle(dep)
    first = set(pods.pods)
    assert len(first) == 2 and ctl.status(dep)["complete"]
    assert ctl.status(dep)["message"] == 'deployment "web" successfully rolled out'

    dep = ctl.restart(dep)
    assert rollouts.RESTARTED_AT in dep["spec"]["template"]["metadata"]["annotations"]
    assert ctl.status(dep)["revision"] == 2
    asyncio.run(ctl.reconcile(dep))
    assert "1 out of 2 new replicas" in ctl.status(dep)["message"]  # 25% of 2: one surge pod
    settle(dep)
    assert ctl.status(dep)["complete"] and first.isdisjoint(pods.pods)
    assert set(pods.deleted) == first

    dep, back_to = ctl.undo(dep)
    assert back_to == 1 and ctl.status(dep)["revision"] == 3  # as kubectl: undo makes a new number
    assert rollouts.RESTARTED_AT not in (dep["spec"]["template"]["metadata"].get("annotations") or {})
    settle(dep)
    assert set(pods.pods) == first  # the same template: the same pod names
    assert [r["revision"] for r in ctl.history(dep)] == [2, 3]
    with pytest.raises(ManifestError, match="no revision 7"):
        ctl.undo(dep, 7)


def test_undo_without_history_says_so() -> None:
    (dep,) = manifests.load_text(DEPLOYMENT, "d.yaml", "demo")
    ctl = rollouts.Controller(lambda k: None, lambda o: None, FakePods())
    ctl.observe(dep)
    with pytest.raises(ManifestError, match="no previous revision to roll back to"):
        ctl.undo(dep)


def test_a_rollout_that_never_gets_ready_is_reported_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    (dep,) = manifests.load_text(DEPLOYMENT.replace("replicas: 2", "replicas: 1"), "d.yaml", "demo")
    dep["spec"]["progressDeadlineSeconds"] = 5
    pods = FakePods()
    ctl = rollouts.Controller(lambda k: None, lambda o: None, pods)
    ctl.observe(dep)
    asyncio.run(ctl.reconcile(dep))
    history = ctl.histories[manifests.key(dep)]
    history.progressed_at -= 10
    s = ctl.status(dep)
    assert s["stalled"] and s["message"] == 'deployment "web" exceeded its progress deadline'
