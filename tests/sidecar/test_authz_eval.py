"""The AuthorizationPolicy evaluator as a pure function: Istio's semantics, table by table.

Policies are written as Istio YAML and go through the control plane's parser, so these tests
also pin the parse → model → decision path a proxy sees.
"""

from __future__ import annotations

import logging

import pytest
import yaml

from control_plane.api import model
from control_plane.authz import parse_authorization_policy
from sidecar import authz
from sidecar.authz import Attrs, Engine, decide, normalize_path, string_match
from sidecar.stats import Stats

SLEEP = "cluster.local/ns/foo/sa/sleep"
OTHER = "cluster.local/ns/bar/sa/other"


def pol(text: str, name: str = "p", ns: str = "foo", dry_run: bool = False) -> model.AuthzPolicy:
    obj = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": ns,
                        **({"annotations": {"istio.io/dry-run": "true"}} if dry_run else {})},
           "spec": yaml.safe_load(text) or {}}
    return parse_authorization_policy(obj)[0].policy


def http(method="GET", path="/", host="httpbin.foo:8000", headers=None, principal=SLEEP,
         src="198.18.0.5", port=8000, sni="") -> Attrs:
    return Attrs(source_ip=src, principal=principal, dest_ip="198.18.0.9", dest_port=port,
                 sni=sni, http=True, method=method, path=path, host=host, headers=headers or {})


def tcp(principal=SLEEP, src="198.18.0.5", port=9000) -> Attrs:
    return Attrs(source_ip=src, principal=principal, dest_ip="198.18.0.9", dest_port=port)


def allowed(policies, a: Attrs) -> bool:
    return decide(policies, a).allowed


@pytest.mark.parametrize("pattern,value,expected", [
    ("*", "x", True), ("*", "", False), ("/api*", "/api/v1", True), ("/api*", "/ap", False),
    ("*.local", "a.cluster.local", True), ("*.local", "a.com", False), ("GET", "GET", True),
    ("GET", "get", False), ("/a", "/a/", False),
])
def test_string_match(pattern, value, expected):
    assert string_match(pattern, value) is expected


@pytest.mark.parametrize("raw,expected", [
    ("/a/b?x=1", "/a/b"), ("/public/../admin", "/admin"), ("/./admin", "/admin"),
    ("//admin", "/admin"), ("/a/", "/a/"), ("/", "/"), ("*", "*"), ("/a#frag", "/a"),
    ("http://h:80/x/../admin?q", "/admin"), ("HTTPS://h", "/"), ("h:443", "h:443"),
])
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


def test_no_policy_allows_and_empty_spec_denies_all():
    assert allowed([], http())
    nothing = pol("{}")  # the docs' allow-nothing
    assert not allowed([nothing], http()) and not allowed([nothing], tcp())


def test_rules_with_one_empty_rule_allow_all_and_deny_with_no_rules_matches_nothing():
    assert allowed([pol("{}"), pol("rules: [{}]", "all")], http())
    assert allowed([pol("action: DENY")], http())
    assert not allowed([pol("action: DENY\nrules: [{}]")], tcp())


def test_deny_beats_allow_and_custom_comes_first():
    allow_all = pol("rules: [{}]", "allow-all")
    deny_get = pol("action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]", "deny-get")
    d = decide([allow_all, deny_get], http())
    assert (d.allowed, d.policy, d.action) == (False, "foo/deny-get", "DENY")
    assert allowed([allow_all, deny_get], http(method="POST"))
    custom = pol("action: CUSTOM\nprovider: {name: ext}\nrules: [{to: [{operation: {paths: [/x]}}]}]",
                 "ext")
    d = decide([deny_get, custom], http(path="/x"))
    assert (d.allowed, d.policy, d.action) == (False, "foo/ext", "CUSTOM")
    assert allowed([custom], http(path="/y"))


def test_audit_never_changes_the_decision_but_is_counted(caplog):
    audit = pol("action: AUDIT\nrules: [{to: [{operation: {paths: ['/audited*']}}]}]", "aud")
    stats = Stats()
    with caplog.at_level(logging.INFO, "remora.authz"):
        assert Engine((audit,)).evaluate(http(path="/audited/1"), stats).allowed
    assert stats.authz[("foo/aud", "AUDIT", "audited")] == 1
    assert "matched policy foo/aud" in caplog.text
    assert not allowed([audit, pol("{}")], http(path="/audited/1"))


@pytest.mark.parametrize("source,principal,src,expected", [
    ("principals: [cluster.local/ns/foo/sa/sleep]", SLEEP, "198.18.0.5", True),
    ("principals: [cluster.local/ns/foo/sa/sleep]", OTHER, "198.18.0.5", False),
    ("principals: ['*']", "", "198.18.0.5", False),  # presence needs mTLS
    ("principals: ['*/sa/sleep']", SLEEP, "198.18.0.5", True),
    ("notPrincipals: ['*']", "", "198.18.0.5", True),
    ("notPrincipals: [cluster.local/ns/foo/sa/sleep]", SLEEP, "198.18.0.5", False),
    ("namespaces: [foo]", SLEEP, "198.18.0.5", True),
    ("namespaces: [foo]", OTHER, "198.18.0.5", False),
    ("namespaces: [foo]", "", "198.18.0.5", False),
    ("notNamespaces: [bar]", OTHER, "198.18.0.5", False),
    ("notNamespaces: [bar]", SLEEP, "198.18.0.5", True),
    ("ipBlocks: [198.18.0.0/24]", "", "198.18.0.5", True),
    ("ipBlocks: [198.18.0.5]", "", "198.18.0.6", False),
    ("notIpBlocks: [198.18.0.0/24]", "", "198.18.0.5", False),
    ("remoteIpBlocks: [198.18.0.0/24]", "", "198.18.0.5", True),
    ("notRemoteIpBlocks: [198.18.0.0/24]", "", "198.18.0.5", False),
    ("ipBlocks: ['fd00::/8']", "", "fd00::5", True),
    ("ipBlocks: [198.18.0.0/24]", "", "::ffff:198.18.0.5", True),
    ("{principals: [cluster.local/ns/foo/sa/sleep], ipBlocks: [198.18.9.0/24]}", SLEEP, "198.18.0.5",
     False),  # fields of one source are ANDed
])
def test_sources(source, principal, src, expected):
    p = pol(f"rules: [{{from: [{{source: {source if source.startswith('{') else '{' + source + '}'}}}]}}]")
    assert allowed([p], http(principal=principal, src=src)) is expected
    assert allowed([p], tcp(principal=principal, src=src)) is expected


def test_from_entries_are_ored_and_rules_are_ored():
    p = pol("""
rules:
- from: [{source: {principals: [nobody]}}, {source: {namespaces: [foo]}}]
- to: [{operation: {paths: [/open]}}]
""")
    assert allowed([p], http(principal=SLEEP))
    assert not allowed([p], http(principal=OTHER))
    assert allowed([p], http(principal=OTHER, path="/open"))


@pytest.mark.parametrize("operation,attrs,expected", [
    ("hosts: [httpbin.foo]", {"host": "HTTPBIN.foo:8000"}, True),
    ("hosts: [httpbin.foo:8000]", {"host": "httpbin.foo:8000"}, True),
    ("hosts: ['*.foo']", {"host": "httpbin.foo"}, True),
    ("hosts: [other]", {"host": "httpbin.foo"}, False),
    ("notHosts: [httpbin.foo]", {"host": "httpbin.foo:8000"}, False),
    ("ports: ['8000']", {"port": 8000}, True),
    ("ports: [8000]", {"port": 9000}, False),
    ("notPorts: ['8000']", {"port": 8000}, False),
    ("methods: [GET, HEAD]", {"method": "HEAD"}, True),
    ("methods: [GET]", {"method": "POST"}, False),
    ("notMethods: [DELETE]", {"method": "DELETE"}, False),
    ("paths: [/ip]", {"path": "/ip"}, True),
    ("paths: [/ip]", {"path": "/ip/"}, False),
    ("paths: ['/api/*']", {"path": "/api/v1"}, True),
    ("paths: ['*.json']", {"path": "/a.json"}, True),
    ("paths: ['*']", {"path": "/"}, True),
    ("notPaths: ['/admin*']", {"path": "/admin/x"}, False),
    ("{methods: [GET], paths: [/ip]}", {"method": "GET", "path": "/headers"}, False),
])
def test_operations(operation, attrs, expected):
    op = operation if operation.startswith("{") else "{" + operation + "}"
    p = pol(f"rules: [{{to: [{{operation: {op}}}]}}]")
    assert allowed([p], http(**attrs)) is expected


@pytest.mark.parametrize("cond,attrs,expected", [
    ("{key: 'request.headers[x-token]', values: [admin]}", {"headers": {"x-token": "admin"}}, True),
    ("{key: 'request.headers[X-Token]', values: [admin]}", {"headers": {"x-token": "guest"}}, False),
    ("{key: 'request.headers[x-token]', notValues: [admin]}", {"headers": {}}, True),
    ("{key: 'request.headers[x-token]', values: ['*']}", {"headers": {}}, False),
    ("{key: source.ip, values: [198.18.0.0/24]}", {"src": "198.18.0.5"}, True),
    ("{key: remote.ip, notValues: [198.18.0.5]}", {"src": "198.18.0.5"}, False),
    ("{key: source.namespace, values: [foo]}", {}, True),
    ("{key: source.principal, values: ['*/sa/other']}", {}, False),
    ("{key: destination.ip, values: [198.18.0.9/32]}", {}, True),
    ("{key: destination.port, values: ['8000']}", {"port": 8000}, True),
    ("{key: destination.port, notValues: ['8000']}", {"port": 8000}, False),
    ("{key: connection.sni, values: ['*.example']}", {"sni": "a.example"}, True),
    ("{key: connection.sni, values: ['*']}", {}, False),
])
def test_conditions(cond, attrs, expected):
    p = pol(f"rules: [{{when: [{cond}]}}]")
    assert allowed([p], http(**attrs)) is expected


def test_tcp_allow_rule_with_http_fields_never_matches_deny_rule_applies_without_them():
    # The Istio "TCP traffic" task: methods on port 9000 in ALLOW, then in DENY.
    allow = pol("rules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]", "tcp-policy")
    assert not allowed([allow], tcp(port=9000))
    assert allowed([allow], http(port=9000))
    deny = pol("action: DENY\nrules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]")
    assert not allowed([deny], tcp(port=9000))
    assert allowed([deny], tcp(port=9001))
    hdr = pol("action: DENY\nrules: [{when: [{key: 'request.headers[x]', values: [y]}]}]")
    assert not allowed([hdr], tcp())
    assert allowed([hdr], http())


def test_jwt_fields_fail_closed():
    allow = pol("rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")
    assert not allowed([allow], http())
    deny = pol("action: DENY\nrules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]")
    assert not allowed([deny], http())


def test_dry_run_evaluates_logs_and_counts_without_enforcing(caplog):
    dry = pol("action: DENY\nrules: [{to: [{operation: {paths: [/headers]}}]}]", "deny-path-headers",
              dry_run=True)
    stats = Stats()
    eng = Engine((dry,))
    with caplog.at_level(logging.INFO, "remora.authz"):
        assert eng.evaluate(http(path="/headers"), stats).allowed
        assert eng.evaluate(http(path="/ip"), stats).allowed
    assert stats.authz[("foo/deny-path-headers", "DENY", "dry_run_denied")] == 1
    assert stats.authz[("none", "none", "dry_run_allowed")] == 1
    assert "dry-run: would deny GET httpbin.foo:8000/headers" in caplog.text
    assert "/ip" not in caplog.text
    text = stats.render_prometheus()
    assert ('remora_authz_decisions_total{policy="foo/deny-path-headers",action="DENY",'
            'result="dry_run_denied"} 1') in text


def test_denials_are_logged_with_the_policy_and_rate_limited(caplog):
    eng = Engine((pol("action: DENY\nrules: [{}]", "deny-all"),))
    authz._log.window = 0.0
    with caplog.at_level(logging.INFO, "remora.authz"):
        for _ in range(100):
            assert not eng.evaluate(tcp(), None).allowed
    lines = [r for r in caplog.records if "denied TCP connection" in r.getMessage()]
    assert 1 <= len(lines) <= authz._log.per_second
    assert "policy foo/deny-all (DENY)" in lines[0].getMessage()


def test_check_http_joins_repeated_headers_and_ignores_pseudo_headers():
    p = pol("rules: [{when: [{key: 'request.headers[x-a]', values: ['1,2']}]}]")
    gate = authz.Gate(lambda: (p,), None, "::ffff:198.18.0.5", None, ("198.18.0.9", 80))
    assert gate.attrs.source_ip == "198.18.0.5"
    assert authz.check_http(gate, b"GET", b"/", b"h", [(b":path", b"/"), (b"x-a", b"1"), (b"X-A", b"2")])
    assert not authz.check_http(gate, b"GET", b"/", b"h", [(b"x-a", b"1")])
    assert authz.check_http(authz.Gate(lambda: (), None, "1.2.3.4", None, ("1.2.3.5", 1)),
                            "GET", "/", "h", [])


def test_absolute_form_is_checked_by_its_path_and_authority():
    deny = pol("action: DENY\nrules: [{to: [{operation: {paths: ['/admin*']}}]}]")
    gate = authz.Gate(lambda: (deny,), None, "198.18.0.5", None, ("198.18.0.9", 80))
    assert not authz.check_http(gate, b"GET", b"http://x/admin/1", None, [(b"host", b"y")])
    only = pol("rules: [{to: [{operation: {hosts: [good]}}]}]")
    gate = authz.Gate(lambda: (only,), None, "198.18.0.5", None, ("198.18.0.9", 80))
    assert authz.check_http(gate, b"GET", b"http://good/", None, [(b"host", b"evil")])
    assert not authz.check_http(gate, b"GET", b"http://evil/", None, [(b"host", b"good")])
