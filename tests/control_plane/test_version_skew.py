"""Version skew across one minor version, both directions, over the real discovery stream:

- a new proxy takes a snapshot from a newer control plane that has fields it does not know:
  it skips them, applies the rest, ACKs, and reports the fields once (in its ACK);
- an old (0.1, strict) proxy against a newer control plane: the server prunes each snapshot to
  the 0.1 shape, so the old proxy never NACKs a field it cannot know; its hello without the
  newer optional fields is accepted.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from cp_harness import FakeRuntime, RunningControlPlane, running_client
from test_remoractl import remoractl

from control_plane import server as server_mod
from control_plane.api import discovery as wire
from control_plane.api import model, skew
from control_plane.api.wsclient import connect
from control_plane.builder import Snapshot, SnapshotBuilder
from sidecar import discovery as sidecar_discovery

# What a future control plane adds: a top-level field and one inside every cluster.
FUTURE = {"future_feature": {"on": True}}
FUTURE_CLUSTER = {"outlier_detection": {"consecutive_5xx": 5}}


def with_future_fields(original):
    def snapshot_for(self, key):
        snap = original(self, key)
        body = json.loads(snap.payload)
        body.update(FUTURE)
        for c in body["clusters"]:
            c.update(FUTURE_CLUSTER)
        return Snapshot(snap.config, json.dumps(body, separators=(",", ":")))
    return snapshot_for


@pytest.fixture
def newer_control_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control plane is 0.3 and sends fields no proxy knows; the real proxy client is 0.2
    (the first release that skips unknown fields; 0.1 decoded strictly)."""
    monkeypatch.setattr(SnapshotBuilder, "snapshot_for", with_future_fields(SnapshotBuilder.snapshot_for))
    monkeypatch.setattr(server_mod, "SERVER_VERSION", "0.3.0")
    monkeypatch.setattr(sidecar_discovery, "PROXY_VERSION", "0.2.0")


def test_decoder_skips_unknown_fields_only_when_asked_and_keeps_types_strict() -> None:
    body = model.ProxyConfig(clusters=(model.Cluster("a|80", "a", 80),)).to_dict()
    body["clusters"][0]["new_knob"] = 1
    with pytest.raises(model.ConfigError, match=r"config.clusters\[0\]: unknown field 'new_knob'"):
        model.ProxyConfig.from_dict(body)
    ignored: list[str] = []
    cfg = model.ProxyConfig.from_dict(body, ignored)
    assert cfg.clusters[0].port == 80 and ignored == ["config.clusters[0].new_knob"]
    body["clusters"][0]["port"] = "80"  # a known field of the wrong type is still an error
    with pytest.raises(model.ConfigError, match=r"config.clusters\[0\].port: expected int"):
        model.ProxyConfig.from_dict(body, [])


def test_recorded_release_shapes_are_never_narrowed() -> None:
    """A field a strict release knows may never be removed: it would be required by it."""
    current = skew.shape_of(model.ProxyConfig)

    def missing(old: skew.Shape, new: skew.Shape, path: str) -> list[str]:
        if old is None:
            return []
        if new is None:
            return [path]
        return [p for k in old for p in ([f"{path}.{k}"] if k not in new else
                                         missing(old[k], new[k], f"{path}.{k}"))]

    for release, shape in skew.STRICT_RELEASES.items():
        gone = set(missing(shape, current, "config")) - skew.DOWNGRADED.get(release, frozenset())
        assert gone == set(), release


def test_fields_added_since_a_recorded_release_have_defaults() -> None:
    """A newer proxy decodes an older control plane's snapshot only if what it lacks has a default."""
    import dataclasses
    import typing

    def dataclasses_in(tp) -> list:
        if dataclasses.is_dataclass(tp):
            return [tp]
        return [d for a in typing.get_args(tp) for d in dataclasses_in(a)]

    def check(tp, shape: skew.Shape, path: str) -> list[str]:
        bad = []
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            if shape is not None and f.name not in shape:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    bad.append(f"{path}.{f.name}")
                continue
            for inner in dataclasses_in(hints[f.name]):
                bad += check(inner, (shape or {}).get(f.name), f"{path}.{f.name}")
        return bad

    for release, shape in skew.STRICT_RELEASES.items():
        assert check(model.ProxyConfig, shape, "config") == [], release


def test_prune_and_field_paths() -> None:
    dropped: list[str] = []
    body = {"version": "v", "x": 1, "clusters": [{"name": "a", "y": 2}, {"name": "b", "y": 3}]}
    out = skew.prune(body, {"version": None, "clusters": {"name": None}}, "config", dropped)
    assert out == {"version": "v", "clusters": [{"name": "a"}, {"name": "b"}]}
    assert sorted({skew.field_path(p) for p in dropped}) == ["config.clusters[*].y", "config.x"]
    assert skew.strict_shape_for("0.1.7") is skew.STRICT_RELEASES[(0, 1)]
    assert skew.strict_shape_for("0.2.0") is None


async def test_new_proxy_ignores_fields_of_a_newer_control_plane_and_reports_them_once(
        control_plane: RunningControlPlane, newer_control_plane: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = control_plane
    acks: list[dict] = []
    original = server_mod.DiscoveryServer._on_message

    async def spy(self, conn, token, data):
        msg = json.loads(data)
        if msg["type"] == wire.ACK:
            acks.append(msg)
        await original(self, conn, token, data)

    monkeypatch.setattr(server_mod.DiscoveryServer, "_on_message", spy)
    rt = FakeRuntime()
    async with running_client(cp, rt):
        await cp.wait(lambda: rt.configs and cp.server.connections["reviews-v1.shop"].state.status() == "SYNCED")
        st = cp.server.connections["reviews-v1.shop"].state
        want = ["config.clusters[*].outlier_detection", "config.future_feature"]
        assert sorted(st.ignored_fields) == want
        assert acks[0]["ignored"] == want
        code, out, _ = await remoractl("proxy-status", "--control-plane-url", cp.monitoring_url)
        assert f"reviews-v1.shop (0.2.0) ignores snapshot fields it does not know: {', '.join(want)}" in out
        # A changed configuration: applied and ACKed, the same unknown fields not reported again.
        (cp.manifests / "more.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\n"
            "spec: {clusterIP: 198.19.0.11, ports: [{name: http, port: 9080}]}\n")
        await cp.wait(lambda: len(rt.configs) >= 2 and st.status() == "SYNCED")
        assert len(acks) >= 2 and all("ignored" not in a for a in acks[1:])
        assert any(o.service.startswith("ratings.") for o in rt.configs[-1].outbound)


async def test_old_strict_proxy_is_served_snapshots_it_can_decode(
        control_plane: RunningControlPlane, newer_control_plane: None) -> None:
    cp = control_plane
    ws = await connect("127.0.0.1", cp.port, wire.PATH, cp.client_ssl, server_hostname="localhost")
    try:
        # A 0.2 control plane (one minor newer) and a 0.1 hello: no template_hash, no last_version.
        server_mod.SERVER_VERSION = "0.2.0"  # undone by the fixture's monkeypatch
        await ws.send_text(wire.encode(wire.HELLO, token=cp.token(), pod="reviews-v1", namespace="shop",
                                       proxy_version="0.1.0"))
        snap = None
        while snap is None:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == wire.SNAPSHOT:
                snap = msg
        # The 0.1 decoder is strict: nothing outside 0.1's recorded shape may arrive.
        assert skew.prune(snap["config"], skew.STRICT_RELEASES[(0, 1)]) == snap["config"]
        version = snap["config"]["version"]
        await ws.send_text(wire.encode(wire.ACK, version=version))  # a 0.1 ACK: no "ignored"
        st = cp.server.connections["reviews-v1.shop"].state
        await cp.wait(lambda: st.status() == "SYNCED")
        assert (st.proxy_version, st.template_hash) == ("0.1.0", "")
        assert {"config.clusters[*].outlier_detection", "config.future_feature"} <= st.pruned_fields
        code, out, _ = await remoractl("proxy-status", "--control-plane-url", cp.monitoring_url)
        assert "reviews-v1.shop (0.1.0) is sent snapshots without: " in out
        assert "config.future_feature" in out
    finally:
        await ws.close()


def test_routes_are_downgraded_for_a_0_1_proxy_or_left_out() -> None:
    """0.1 matched on path_exact/path_prefix and exact method and headers: what it can express
    is rewritten; a route it cannot evaluate is left out rather than widened to match all."""
    def route(name: str, match: dict) -> dict:
        return {"name": name, "destinations": [{"cluster": "c", "weight": 100}], "matches": [match]}

    body = {"outbound": [{"routes": [
        route("prefix", {"uri": {"prefix": "/api"}, "method": {"exact": "GET"},
                         "headers": {"end-user": {"exact": "jason"}}}),
        route("regex", {"uri": {"regex": "/a.*"}}),
        route("query", {"query_params": {"x": {"exact": "1"}}}),
        {"name": "redirect", "destinations": [], "matches": []},
    ]}]}
    dropped: list[str] = []
    out = skew.downgrade(body, "0.1.3", dropped)
    (kept,) = out["outbound"][0]["routes"]
    assert kept["name"] == "prefix"
    assert kept["matches"] == [{"path_exact": None, "path_prefix": "/api", "method": "GET",
                                "headers": {"end-user": "jason"}}]
    assert len(dropped) == 3
    assert skew.downgrade({"outbound": []}, "0.2.0", []) == {"outbound": []}
