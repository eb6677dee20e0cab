"""Snapshot builder: golden snapshots from a small mesh, and the rules they encode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from control_plane.api import model
from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.sources.files import read_manifests

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent.parent / "golden" / "control_plane"
UPDATE = os.environ.get("REMORA_UPDATE_GOLDEN") == "1"  # regenerate: REMORA_UPDATE_GOLDEN=1 pytest ...


def builder(objects: list[dict] | None = None) -> SnapshotBuilder:
    objs = objects if objects is not None else read_manifests(DATA / "mesh.yaml")
    return SnapshotBuilder(Registry.from_objects(objs), "cluster.local", "ROOTS\n")


@pytest.mark.parametrize("pod", ["reviews-v1", "reviews-v2"])
def test_golden_snapshot(pod: str) -> None:
    cfg = builder().snapshot_for(ProxyKey("shop", pod)).config
    got = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"snapshot-{pod}.json"
    if UPDATE:
        path.write_text(got)
    assert got == path.read_text(), f"snapshot differs from {path}; REMORA_UPDATE_GOLDEN=1 regenerates"
    # What the proxy receives must pass its own strict decoder.
    assert ProxyConfig.from_dict(json.loads(got)).content_hash() == cfg.version


def test_weighted_split_to_subsets_and_subset_endpoints() -> None:
    cfg = builder().snapshot_for(ProxyKey("shop", "reviews-v1")).config
    (port,) = [o for o in cfg.outbound if o.port == 9080]
    split = port.routes[1]
    assert [(d.cluster, d.weight) for d in split.destinations] == [
        ("reviews.shop.svc.cluster.local|9080|v1", 80), ("reviews.shop.svc.cluster.local|9080|v2", 20),
    ]
    clusters = {c.name: c for c in cfg.clusters}
    assert [e.address for e in clusters["reviews.shop.svc.cluster.local|9080|v2"].endpoints] == ["198.18.0.22"]
    # Named targetPort resolved per pod; identity only for injected pods.
    ep = clusters["reviews.shop.svc.cluster.local|9080|v1"].endpoints[0]
    assert (ep.port, ep.identity) == (8080, "spiffe://cluster.local/ns/shop/sa/reviews")
    assert clusters["cache.shop.svc.cluster.local|6379"].endpoints[0].identity is None


def test_peer_authentication_levels() -> None:
    b = builder()
    assert b.snapshot_for(ProxyKey("shop", "reviews-v1")).config.inbound == model.InboundPolicy(model.STRICT)
    v2 = b.snapshot_for(ProxyKey("shop", "reviews-v2")).config.inbound
    assert (v2.mtls_mode, v2.mode_for(8080), v2.mode_for(9000)) == ("PERMISSIVE", "STRICT", "PERMISSIVE")
    # Another namespace: only the mesh-wide policy applies.
    assert b.snapshot_for(ProxyKey("other", "x")).config.inbound.mtls_mode == model.PERMISSIVE


def test_unimplemented_fields_are_reported_not_dropped() -> None:
    notes = builder().notes
    assert "DestinationRule/shop/reviews: spec.exportTo ['.'] is not implemented yet (visible to every namespace)" \
        in notes
    assert "VirtualService/shop/reviews: spec.http[1].mirrors is not implemented yet" in notes
    cfg = builder().snapshot_for(ProxyKey("shop", "reviews-v1")).config
    assert cfg.unsupported == notes


def test_weight_change_changes_version_and_equal_content_keeps_it() -> None:
    objs = read_manifests(DATA / "mesh.yaml")
    before = builder(objs).snapshot_for(ProxyKey("shop", "reviews-v1")).config
    assert builder(objs).snapshot_for(ProxyKey("shop", "reviews-v1")).config.version == before.version
    vs = next(o for o in objs if o["kind"] == "VirtualService")
    vs["spec"]["http"][1]["route"][0]["weight"] = 50
    vs["spec"]["http"][1]["route"][1]["weight"] = 50
    after = builder(objs).snapshot_for(ProxyKey("shop", "reviews-v1")).config
    assert after.version != before.version


def test_endpoint_slices_win_over_the_selector() -> None:
    objs = read_manifests(DATA / "mesh.yaml")
    objs.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "reviews"}},
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["198.18.0.22"], "targetRef": {"kind": "Pod", "name": "reviews-v2"}},
            {"addresses": ["198.18.0.99"], "conditions": {"ready": False}},
        ],
    })
    clusters = {c.name: c for c in builder(objs).snapshot_for(ProxyKey("shop", "a")).config.clusters}
    eps = clusters["reviews.shop.svc.cluster.local|9080"].endpoints
    assert [(e.address, e.labels.get("version")) for e in eps] == [("198.18.0.22", "v2")]


def test_invalid_resource_is_reported_and_skipped() -> None:
    objs = read_manifests(DATA / "mesh.yaml")
    objs.append({"kind": "VirtualService", "metadata": {"name": "bad", "namespace": "shop"},
                 "spec": {"hosts": ["cache"], "http": [{"timeout": "soon", "route": [
                     {"destination": {"host": "cache"}}]}]}})
    reg = Registry.from_objects(objs)
    assert reg.errors == [
        "VirtualService/shop/bad: invalid, ignored: spec.http[0].timeout: expected a duration such as "
        "5s, 0.5s, 500ms or 1m30s, got 'soon'"
    ]


def test_route_to_an_undefined_subset_is_reported() -> None:
    objs = read_manifests(DATA / "mesh.yaml")
    vs = next(o for o in objs if o["kind"] == "VirtualService")
    vs["spec"]["http"][1]["route"][1]["destination"]["subset"] = "v3"
    b = builder(objs)
    assert any("subset 'v3'" in n for n in b.notes)
    cfg = b.snapshot_for(ProxyKey("shop", "reviews-v1")).config
    ProxyConfig.from_dict(cfg.to_dict())  # still valid: the bad destination is left out


@pytest.mark.parametrize(("name", "app", "expected"), [
    ("http-web", None, model.HTTP), ("grpc", None, model.GRPC), ("redis", None, model.OPAQUE),
    ("web", "kubernetes.io/h2c", model.HTTP2), ("tcp-x", "https", model.TLS), ("", None, model.TCP),
    ("mysql-main", None, model.OPAQUE),
])
def test_port_protocol(name: str, app: str | None, expected: str) -> None:
    from control_plane.protocols import port_protocol

    assert port_protocol(name, app) == expected
