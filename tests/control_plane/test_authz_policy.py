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


# -- property: what the control plane accepts, every proxy's strict decoder accepts ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.sampled_from(
    ["*", "GET", "/a*", "0", "300.1.1.1", "", "request.auth.claims[iss]", "NOPE"]))
words = st.lists(st.sampled_from(["*", "GET", "/a*", "*.json", "foo", "cluster.local/ns/foo/sa/x"]),
                 max_size=3)
cidrs = st.lists(st.sampled_from(["198.18.0.0/16", "fd00::1", "198.18.0.5"]), max_size=2)
port_list = st.lists(st.one_of(st.integers(1, 65535), st.sampled_from(["8000", "9000"])), max_size=2)


def mostly(valid, junk=scalars):
    """Junk one time in 20, so accepted policies are common and rejected ones still appear."""
    return st.integers(0, 19).flatmap(lambda i: junk if i == 0 else valid)


source = st.fixed_dictionaries({}, optional={
    **{k: mostly(words) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces",
                                  "requestPrincipals")},
    **{k: mostly(cidrs) for k in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")},
})
operation = st.fixed_dictionaries({}, optional={
    **{k: mostly(words) for k in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")},
    **{k: mostly(port_list) for k in ("ports", "notPorts")},
})
condition = st.one_of(
    st.fixed_dictionaries({"key": st.sampled_from(["request.headers[x-a]", "source.namespace",
                                                   "source.principal", "connection.sni",
                                                   "request.auth.claims[iss]"])},
                          optional={"values": mostly(words), "notValues": mostly(words)}),
    st.fixed_dictionaries({"key": st.sampled_from(["source.ip", "remote.ip", "destination.ip"])},
                          optional={"values": mostly(cidrs), "notValues": mostly(cidrs)}),
    st.fixed_dictionaries({"key": st.just("destination.port")},
                          optional={"values": mostly(st.lists(st.sampled_from(["80", "9000"]), max_size=2))}),
    st.fixed_dictionaries({"key": scalars}),
)
rule = mostly(st.fixed_dictionaries({}, optional={
    "from": mostly(st.lists(st.fixed_dictionaries({"source": source}), max_size=2)),
    "to": mostly(st.lists(st.fixed_dictionaries({"operation": operation}), max_size=2)),
    "when": mostly(st.lists(condition, max_size=2)),
}))
spec = st.fixed_dictionaries({}, optional={
    "action": mostly(st.sampled_from(["ALLOW", "DENY", "AUDIT", "CUSTOM"])),
    "rules": mostly(st.lists(rule, max_size=3)),
    "selector": mostly(st.fixed_dictionaries({"matchLabels": st.dictionaries(
        st.sampled_from(["app", "v"]), st.sampled_from(["a", "b"]), max_size=2)})),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec, st.one_of(st.none(), st.sampled_from(["true", "false", "yes"]), st.lists(scalars, max_size=1)))
def test_accepted_policies_always_pass_the_proxy_decoder(raw_spec, dry) -> None:
    meta = {"name": "p", "namespace": "foo"}
    if dry is not None:
        meta["annotations"] = {"istio.io/dry-run": dry} if isinstance(dry, str) else dry
    obj = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta,
           "spec": raw_spec}
    reg = Registry.from_objects([obj])  # invalid input is an error entry, never an exception
    if not reg.authorization_policies:
        assert reg.errors and reg.errors[0].startswith("AuthorizationPolicy/foo/p: invalid, ignored: ")
        return
    pol = reg.authorization_policies[0].policy
    base = ProxyConfig(inbound=model.InboundPolicy(authz=(pol,)))
    assert ProxyConfig.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    # ... and the proxy can evaluate it on any request or connection.
    from sidecar.authz import Attrs, decide
    for a in (Attrs("198.18.0.5", "cluster.local/ns/foo/sa/x", "fd00::1", 9000),
              Attrs("::ffff:198.18.0.5", "", "198.18.0.9", 80, "x.example", True, "GET", "/a.json",
                    "foo:80", {"x-a": "foo"})):
        assert decide((pol,), a).allowed in (True, False)
