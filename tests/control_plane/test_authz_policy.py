"""AuthorizationPolicy in the control plane: parsing with field paths, what is reported, and
which workloads each policy reaches (selector, targetRefs, root namespace)."""

from __future__ import annotations

import json

import pytest
import yaml

from control_plane.api import model
from control_plane.api.model import ConfigError, ProxyConfig
from control_plane.authz import parse_authorization_policy
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry


def ap(spec: str, name: str = "p", ns: str = "foo", version: str = "v1", **meta) -> dict:
    return {"apiVersion": f"security.istio.io/{version}", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns, **meta}, "spec": yaml.safe_load(spec)}


def pod(name: str, ns: str, labels: dict, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"serviceAccountName": name, "containers": [{"name": "app"}]},
            "status": {"podIP": ip, "phase": "Running"}}


def svc(name: str, ns: str, selector: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "198.19.0.7", "selector": selector, "ports": [{"name": "http", "port": 80}]}}


@pytest.mark.parametrize("spec,error", [
    ("action: MAYBE", "spec.action: 'MAYBE' is not one of ALLOW, DENY, AUDIT, CUSTOM"),
    ("rules: {}", "spec.rules: expected a list, got dict"),
    ("rules: [{to: [{operation: {ports: ['http']}}]}]", "spec.rules[0].to[0].operation.ports[0]: 'http' is not a port"),
    ("rules: [{from: [{source: {ipBlocks: [300.1.1.1]}}]}]", "spec.rules[0].from[0].source.ipBlocks[0]: '300.1.1.1'"),
    ("rules: [{from: [{source: {principals: [5]}}]}]", "spec.rules[0].from[0].source.principals[0]: expected a non-empty string"),
    ("rules: [{when: [{key: source.ip}]}]", "spec.rules[0].when[0]: one of values or notValues is required"),
    ("rules: [{when: [{key: request.magic, values: [x]}]}]", "spec.rules[0].when[0].key: 'request.magic' is not a supported key"),
    ("rules: [{when: [{key: destination.port, values: ['0']}]}]", "spec.rules[0].when[0].values[0]: '0' is not a port number"),
    ("{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: x}]}", "selector and targetRefs cannot both be set"),
    ("{action: ALLOW, provider: {name: x}}", "spec.provider: only valid with action CUSTOM"),
])
def test_invalid_policies_name_the_field(spec: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_authorization_policy(ap(spec))
    assert error in str(e.value)


def test_invalid_policy_is_skipped_by_the_registry_with_its_path() -> None:
    reg = Registry.from_objects([ap("action: MAYBE")])
    assert reg.errors == ["AuthorizationPolicy/foo/p: invalid, ignored: spec.action: 'MAYBE' is not one "
                          "of ALLOW, DENY, AUDIT, CUSTOM"]
    assert reg.authorization_policies == []


def test_unsupported_parts_are_reported() -> None:
    _, notes = parse_authorization_policy(ap("""
action: CUSTOM
provider: {name: ext-authz}
rules:
- from: [{source: {requestPrincipals: ['*']}}]
  when: [{key: 'request.auth.claims[iss]', values: [x]}]
"""))
    text = "\n".join(notes)
    assert "spec.action CUSTOM (external authorization) is not implemented" in text
    assert "spec.rules[0].from[0].source.requestPrincipals needs JWT" in text
    assert "spec.rules[0].when[0].key request.auth.claims[iss] needs JWT" in text
    _, notes = parse_authorization_policy(ap("{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]}"))
    assert "gateway.networking.k8s.io/Gateway is not a target" in notes[0]


def test_v1beta1_and_v1_parse_the_same_and_dry_run_annotation() -> None:
    spec = "rules: [{to: [{operation: {methods: [GET]}}]}]"
    a = parse_authorization_policy(ap(spec, version="v1"))[0].policy
    b = parse_authorization_policy(ap(spec, version="v1beta1"))[0].policy
    assert a == b == model.AuthzPolicy("foo/p", "ALLOW", (model.AuthzRule(
        operations=(model.AuthzOperation(methods=("GET",)),)),))
    dry = parse_authorization_policy(ap(spec, annotations={"istio.io/dry-run": "true"}))[0].policy
    assert dry.dry_run
    with pytest.raises(ValueError, match=r"istio.io/dry-run\]: 'yes' is not true or false"):
        parse_authorization_policy(ap(spec, annotations={"istio.io/dry-run": "yes"}))


def test_selection_selector_target_refs_root_namespace() -> None:
    objs = [
        pod("web", "foo", {"app": "web"}, "198.18.0.10"),
        pod("db", "foo", {"app": "db"}, "198.18.0.11"),
        pod("other", "bar", {"app": "web"}, "198.18.0.12"),
        svc("websvc", "foo", {"app": "web"}),
        ap("{}", "ns-wide"),
        ap("{selector: {matchLabels: {app: web}}}", "by-selector"),
        ap("{targetRefs: [{kind: Service, group: '', name: websvc}]}", "by-ref"),
        ap("{targetRefs: [{kind: Service, name: nosuch}]}", "dangling-ref"),
        ap("{}", "mesh-wide", ns="remora-system"),
        ap("{selector: {matchLabels: {app: web}}}", "mesh-web", ns="remora-system"),
    ]
    b = SnapshotBuilder(Registry.from_objects(objs), "cluster.local", "")

    def names(ns: str, name: str) -> list[str]:
        return [p.name for p in b.snapshot_for(ProxyKey(ns, name)).config.inbound.authz]

    assert names("foo", "web") == ["foo/by-ref", "foo/by-selector", "foo/ns-wide",
                                   "remora-system/mesh-web", "remora-system/mesh-wide"]
    assert names("foo", "db") == ["foo/ns-wide", "remora-system/mesh-wide"]
    assert names("bar", "other") == ["remora-system/mesh-web", "remora-system/mesh-wide"]
    # Every snapshot with policies passes the proxy's strict decoder.
    cfg = b.snapshot_for(ProxyKey("foo", "web")).config
    assert ProxyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_proxy_decoder_rejects_bad_policies_with_paths() -> None:
    base = ProxyConfig().to_dict()
    base["inbound"]["authz"] = [{"name": "foo/p", "action": "NOPE"}]
    with pytest.raises(ConfigError, match=r"config.inbound.authz\[0\].action: 'NOPE'"):
        ProxyConfig.from_dict(base)
    base["inbound"]["authz"] = [{"name": "foo/p", "rules": [{"conditions": [{"key": "x.y", "values": ["1"]}]}]}]
    with pytest.raises(ConfigError, match=r"authz\[0\].rules\[0\].conditions\[0\].key: 'x.y'"):
        ProxyConfig.from_dict(base)
