"""`remoractl upgrade`'s Kubernetes path against kmock (a Kubernetes API emulator): which pods it
reads and whose they are (Pod -> ReplicaSet -> Deployment), the mesh ConfigMap it compares with,
and the restart and undo it sends (the pod-template annotation, as kubectl does)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import kmock
import pytest
import yaml

from control_plane.api import annotations as ann
from control_plane.sources.kube import api_client
from injector.meshconfig import MeshConfig
from injector.template import template_hash
from remoractl import upgrade_plan as up
from remoractl.target import from_url
from remoractl.upgrade_backends import RESTARTED_AT, KubeBackend

VERBS = {"list", "watch", "get", "create", "patch", "delete"}
RESOURCES = {"v1/pods": "Pod", "v1/configmaps": "ConfigMap", "apps/v1/deployments": "Deployment",
             "apps/v1/replicasets": "ReplicaSet", "apps/v1/statefulsets": "StatefulSet",
             "apps/v1/daemonsets": "DaemonSet"}
OLD = json.dumps({"proxyVersion": "0.1.0", "templateHash": "old"})


def ref(kind: str, name: str) -> list[dict]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"{name}-uid",
             "controller": True}]


def pod(name: str, owner: list[dict] | None, status: str = OLD) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "ownerReferences": owner or [],
                         "annotations": {ann.STATUS_ANNOTATION: status}, "labels": {"app": name}},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def workload(kind: str, name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app"}]}}}}


def rolled(name: str, status: dict) -> dict:
    """A Deployment at generation 2 with this status, as its controller would have written it."""
    obj = workload("Deployment", name)
    obj["metadata"]["generation"] = 2
    return {**obj, "status": status}


@pytest.fixture
async def k8s(tmp_path: Path):
    emulator = kmock.KubernetesEmulator()
    for resource, kind in RESOURCES.items():
        emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)
    mesh = {"proxyVersion": "0.2.0"}
    objects = [
        ("v1/configmaps", "remora-system", {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": "remora-mesh", "namespace": "remora-system"},
                                            "data": {"mesh": yaml.safe_dump(mesh)}}),
        ("apps/v1/deployments", "shop", workload("Deployment", "web")),
        ("apps/v1/deployments", "shop", rolled("done", {
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1})),
        ("apps/v1/deployments", "shop", rolled("halfway", {
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1})),
        ("apps/v1/deployments", "shop", rolled("stuck", {
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                            "reason": "ProgressDeadlineExceeded"}]})),
        ("apps/v1/deployments", "shop", rolled("unobserved", {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1})),
        ("apps/v1/statefulsets", "shop", workload("StatefulSet", "db")),
        ("apps/v1/replicasets", "shop", {**workload("ReplicaSet", "web-abc"),
                                         "metadata": {"name": "web-abc", "namespace": "shop",
                                                      "ownerReferences": ref("Deployment", "web")}}),
        ("v1/pods", "shop", pod("web-abc-1", ref("ReplicaSet", "web-abc"))),
        ("v1/pods", "shop", pod("db-0", ref("StatefulSet", "db"))),
        ("v1/pods", "shop", pod("migrate-x", ref("Job", "migrate"))),
        ("v1/pods", "shop", pod("fresh", ref("StatefulSet", "db"), json.dumps(
            {"proxyVersion": "0.2.0", "templateHash": template_hash(MeshConfig(proxy_version="0.2.0"))}))),
    ]
    for resource, ns, obj in objects:
        emulator.objects[resource, ns, obj["metadata"]["name"]] = obj
    async with emulator, kmock.Server(emulator):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
            "users": [{"name": "admin", "user": {"token": "t"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "admin"}}],
        }))
        yield emulator, KubeBackend(api_client(str(kubeconfig)), "remora-system/remora-mesh",
                                    from_url("http://127.0.0.1:1"))


def template_annotations(emulator: kmock.KubernetesEmulator, resource: str, name: str) -> dict:
    obj = emulator.objects[resource, "shop", name]
    return dict((obj["spec"]["template"]["metadata"].get("annotations")) or {})


async def test_plan_from_the_api_resolves_owners_and_reads_the_mesh_configmap(k8s) -> None:
    _, backend = k8s
    want = await asyncio.to_thread(backend.expected, "")
    assert want == up.Expected("0.2.0", template_hash(MeshConfig(proxy_version="0.2.0")))
    pods = await asyncio.to_thread(backend.pods, "shop", {})
    owners = {p.name: (p.owner_kind, p.owner_name) for p in pods}
    assert owners["web-abc-1"] == ("Deployment", "web")  # through its ReplicaSet
    assert owners["db-0"] == ("StatefulSet", "db") and owners["migrate-x"] == ("Job", "migrate")
    p = up.plan(pods, want)
    assert [w.id for w in p.restart] == ["deployment/shop/web", "statefulset/shop/db"]
    assert p.current == 1 and "Jobs are never restarted" in dict(p.reported)["pod shop/migrate-x"]


async def test_restart_sets_restarted_at_and_undo_puts_the_previous_template_back(k8s) -> None:
    emulator, backend = k8s
    web = up.Workload("Deployment", "shop", "web")
    db = up.Workload("StatefulSet", "shop", "db")
    assert await asyncio.to_thread(backend.restarted_at, web) == ""
    await asyncio.to_thread(backend.restart, web)
    stamped = template_annotations(emulator, "apps/v1/deployments", "web")[RESTARTED_AT]
    assert stamped.endswith("Z") and "T" in stamped
    assert template_annotations(emulator, "apps/v1/deployments", "web") == {RESTARTED_AT: stamped}
    await asyncio.to_thread(backend.undo, web, "")
    assert RESTARTED_AT not in template_annotations(emulator, "apps/v1/deployments", "web")

    await asyncio.to_thread(backend.restart, db)  # an earlier restart: its value must come back
    previous = await asyncio.to_thread(backend.restarted_at, db)
    assert previous
    await asyncio.sleep(1)  # restartedAt has one-second resolution, as kubectl's
    await asyncio.to_thread(backend.restart, db)
    assert template_annotations(emulator, "apps/v1/statefulsets", "db")[RESTARTED_AT] != previous
    await asyncio.to_thread(backend.undo, db, previous)
    assert template_annotations(emulator, "apps/v1/statefulsets", "db")[RESTARTED_AT] == previous


async def test_rollout_progress_is_read_from_the_deployment_status(k8s) -> None:
    _, backend = k8s

    async def state(name: str) -> tuple[bool, bool]:
        done, stalled, _ = await asyncio.to_thread(backend.rollout, up.Workload("Deployment", "shop", name))
        return done, stalled

    assert await state("done") == (True, False)
    assert await state("halfway") == (False, False)  # an old replica is still there
    assert await state("stuck") == (False, True)
    assert await state("unobserved") == (False, False)  # the controller has not seen the restart


async def test_unreachable_control_plane_is_a_clear_error(k8s) -> None:
    _, backend = k8s
    with pytest.raises(up.UpgradeError, match="cannot reach the control plane at 127.0.0.1:1"):
        await asyncio.to_thread(backend.proxies)
