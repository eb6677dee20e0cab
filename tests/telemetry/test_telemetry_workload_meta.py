"""The control plane's telemetry metadata of pods: workload name, app, version."""

from __future__ import annotations

from control_plane.api.model import ProxyConfig, WorkloadMeta
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.workload_meta import meta_of, workload_name


def pod(name: str, labels: dict, owners: list | None = None, ip: str = "198.18.0.5") -> dict:
    meta = {"name": name, "namespace": "demo", "labels": labels}
    if owners is not None:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"serviceAccountName": "sa1", "containers": [{"name": "app"}]},
            "status": {"podIP": ip, "phase": "Running"}}


def test_workload_name_follows_the_controller() -> None:
    rs = [{"kind": "ReplicaSet", "name": "reviews-v1-7f9c6d8b4", "controller": True}]
    assert workload_name(pod("reviews-v1-7f9c6d8b4-x2x9z", {"pod-template-hash": "7f9c6d8b4"},
                             rs)["metadata"]) == "reviews-v1"
    assert workload_name(pod("db-0", {}, [{"kind": "StatefulSet", "name": "db"}])["metadata"]) == "db"
    local = [{"kind": "Deployment", "name": "web", "controller": True}]  # the local cluster's pods
    assert workload_name(pod("web-1234abcd-0", {}, local)["metadata"]) == "web"
    assert workload_name(pod("lonely", {})["metadata"]) == "lonely"


def test_app_and_version_labels_or_unknown() -> None:
    assert meta_of("w", "ns", {"app": "a", "version": "v3"}, "sa") == WorkloadMeta(
        "w", "ns", "a", "v3", "sa", "Kubernetes")
    m = meta_of("w", "ns", {"app.kubernetes.io/name": "b", "app.kubernetes.io/version": "2"}, "sa")
    assert (m.app, m.version) == ("b", "2")
    assert (meta_of("w", "ns", {}, "sa").app, meta_of("w", "ns", {}, "sa").version) == (
        "unknown", "unknown")


def test_snapshot_carries_own_workload_and_peers_and_decodes() -> None:
    objs = [pod("web-1234abcd-0", {"app": "web"},
                [{"kind": "Deployment", "name": "web", "controller": True}], "198.18.0.5"),
            pod("loadgen", {"app": "loadgen"}, None, "198.18.0.6")]
    b = SnapshotBuilder(Registry.from_objects(objs), "cluster.local", "")
    cfg = b.snapshot_for(ProxyKey("demo", "web-1234abcd-0")).config
    assert cfg.workload == WorkloadMeta("web", "demo", "web", "unknown", "sa1")
    assert cfg.peers["198.18.0.6"].name == "loadgen"
    assert ProxyConfig.from_dict(cfg.to_dict()) == cfg
    # Pods of one workload share one snapshot; another workload gets its own.
    other = b.snapshot_for(ProxyKey("demo", "loadgen")).config
    assert other.workload.name == "loadgen" and other.version != cfg.version
