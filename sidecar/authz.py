"""AuthorizationPolicy evaluation in the inbound proxy: a pure decision, and the two calls
the listeners make (``check_http`` at each request head, ``check_tcp`` per opaque connection).

Istio's semantics (docs/security.md has the table): CUSTOM (no external authorizer here: what
it matches is denied), then DENY, then ALLOW (no ALLOW policy: allow; ALLOW policies and none
matches: deny). AUDIT never changes the decision. A dry-run policy is evaluated as if enforced,
the result is logged and counted, and the request goes on. On a TCP connection an ALLOW rule
that needs HTTP attributes never matches, and a DENY rule applies without them.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from control_plane.api import model
from control_plane.api.model import (
    ALLOW,
    AUDIT,
    CUSTOM,
    DENY,
    AuthzCondition,
    AuthzOperation,
    AuthzPolicy,
    AuthzRule,
    AuthzSource,
)

if TYPE_CHECKING:
    from .stats import Stats

log = logging.getLogger("remora.authz")
DENIED_BODY = b"RBAC: access denied"
GRPC_PERMISSION_DENIED = b"7"
_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class Attrs:
    """What a decision looks at. ``http`` False: a TCP connection (no request attributes)."""

    source_ip: str = ""
    principal: str = ""  # Istio form: "<trust domain>/ns/<ns>/sa/<sa>"; "" without mTLS
    dest_ip: str = ""
    dest_port: int = 0
    sni: str = ""
    http: bool = False
    method: str = ""
    path: str = ""  # normalized, without the query
    host: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case name → values joined by ","

    @property
    def namespace(self) -> str:
        parts = self.principal.split("/")
        return parts[2] if len(parts) >= 5 and parts[1] == "ns" else ""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: str  # "<ns>/<name>" that decided, or "" (no policy matched)
    action: str  # the action of that policy, or of the rule that applied by default


def principal_of(spiffe_id: str | None) -> str:
    """Istio writes principals without the scheme: spiffe://td/ns/a/sa/b → td/ns/a/sa/b."""
    return spiffe_id.removeprefix("spiffe://") if spiffe_id else ""


def _ip(value: str) -> _Ip | None:
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def _net(value: str) -> _Net:
    return ipaddress.ip_network(value, strict=False)


def string_match(pattern: str, value: str) -> bool:
    """Istio's string match: "*" presence, "abc*" prefix, "*abc" suffix, else exact."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: Iterable[str], value: str) -> bool:
    return any(string_match(p, value) for p in patterns)


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[:end + 1] if end != -1 else host
    head, sep, tail = host.rpartition(":")
    return head if sep and tail.isdigit() and ":" not in head else host


def _host_match(patterns: Iterable[str], host: str) -> bool:
    """Case-insensitive; a pattern without a port also matches the host with its port."""
    host = host.lower()
    bare = _strip_port(host)
    return any(string_match(p.lower(), host) or string_match(p.lower(), bare) for p in patterns)


def _in_blocks(blocks: Iterable[str], ip: str) -> bool:
    addr = _ip(ip)
    return addr is not None and any(addr in _net(b) for b in blocks)


def split_absolute(target: str) -> tuple[str, str] | None:
    """(authority, path) of an absolute-form request target (http://host/path), else None."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    authority, slash, path = rest.partition("/")
    return authority, slash + path if slash else "/"


def normalize_path(raw: str) -> str:
    """The path policies see: no query or fragment, dot segments and repeated slashes removed
    (what the app most likely resolves), so /public/../admin is checked as /admin. An
    absolute-form target is checked by its path, as the app will serve it."""
    absolute = split_absolute(raw)
    path = (absolute[1] if absolute else raw).split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return path  # "*" (OPTIONS) or authority-form (CONNECT), checked as sent
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


# -- matching ------------------------------------------------------------------------------

_HTTP_OP_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")


def _op_is_http(op: AuthzOperation) -> bool:
    return any(getattr(op, f) for f in _HTTP_OP_FIELDS)


def _rule_is_http(rule: AuthzRule) -> bool:
    return any(_op_is_http(o) for o in rule.operations) or any(
        model.authz_header_name(c.key) for c in rule.conditions)


def _source_matches(s: AuthzSource, a: Attrs) -> bool:
    ns = a.namespace
    return ((not s.principals or _any(s.principals, a.principal))
            and not (s.not_principals and _any(s.not_principals, a.principal))
            and (not s.namespaces or _any(s.namespaces, ns))
            and not (s.not_namespaces and _any(s.not_namespaces, ns))
            and (not s.ip_blocks or _in_blocks(s.ip_blocks, a.source_ip))
            and not (s.not_ip_blocks and _in_blocks(s.not_ip_blocks, a.source_ip))
            # No trusted X-Forwarded-For hops: the remote address is the connection's peer.
            and (not s.remote_ip_blocks or _in_blocks(s.remote_ip_blocks, a.source_ip))
            and not (s.not_remote_ip_blocks and _in_blocks(s.not_remote_ip_blocks, a.source_ip)))


def _operation_matches(o: AuthzOperation, a: Attrs) -> bool:
    if not ((not o.ports or a.dest_port in o.ports)
            and not (o.not_ports and a.dest_port in o.not_ports)):
        return False
    if not a.http:  # a DENY rule on TCP: the HTTP fields do not apply
        return True
    return ((not o.hosts or _host_match(o.hosts, a.host))
            and not (o.not_hosts and _host_match(o.not_hosts, a.host))
            and (not o.methods or _any(o.methods, a.method))
            and not (o.not_methods and _any(o.not_methods, a.method))
            and (not o.paths or _any(o.paths, a.path))
            and not (o.not_paths and _any(o.not_paths, a.path)))


def _condition_value(key: str, a: Attrs) -> str | None:
    header = model.authz_header_name(key)
    if header is not None:
        return a.headers.get(header, "") if a.http else None
    return {"source.ip": a.source_ip, "remote.ip": a.source_ip, "source.namespace": a.namespace,
            "source.principal": a.principal, "destination.ip": a.dest_ip,
            "destination.port": str(a.dest_port), "connection.sni": a.sni}.get(key, "")


_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


def _values_hit(key: str, values: tuple[str, ...], value: str) -> bool:
    if key in _IP_KEYS:
        return _in_blocks(values, value)
    if key == "destination.port":
        return value in values
    return _any(values, value)


def _condition_matches(c: AuthzCondition, a: Attrs) -> bool:
    value = _condition_value(c.key, a)
    if value is None:  # request.headers on TCP, inside a DENY rule: does not apply
        return True
    return ((not c.values or _values_hit(c.key, c.values, value))
            and not (c.not_values and _values_hit(c.key, c.not_values, value)))


def rule_matches(rule: AuthzRule, a: Attrs, allow_side: bool) -> bool:
    """``allow_side``: the rule grants access (ALLOW, or the allow half of a dry run), so
    whatever it cannot evaluate makes it never match; otherwise it applies without it."""
    if allow_side and (rule.unevaluable or (not a.http and _rule_is_http(rule))):
        return False
    return ((not rule.sources or any(_source_matches(s, a) for s in rule.sources))
            and (not rule.operations or any(_operation_matches(o, a) for o in rule.operations))
            and all(_condition_matches(c, a) for c in rule.conditions))


def policy_matches(p: AuthzPolicy, a: Attrs) -> bool:
    allow_side = p.action == ALLOW
    return any(rule_matches(r, a, allow_side) for r in p.rules)


def decide(policies: Iterable[AuthzPolicy], a: Attrs) -> Decision:
    """The enforced decision of ``policies`` (dry-run and AUDIT ones are skipped)."""
    by_action: dict[str, list[AuthzPolicy]] = {CUSTOM: [], DENY: [], ALLOW: [], AUDIT: []}
    for p in policies:
        if not p.dry_run:
            by_action[p.action].append(p)
    for action in (CUSTOM, DENY):
        for p in by_action[action]:
            if policy_matches(p, a):
                return Decision(False, p.name, action)
    if not by_action[ALLOW]:
        return Decision(True, "", "")
    for p in by_action[ALLOW]:
        if policy_matches(p, a):
            return Decision(True, p.name, ALLOW)
    return Decision(False, "", ALLOW)


class Engine:
    """One config's policies, split once; ``evaluate`` logs and counts as it decides."""

    def __init__(self, policies: tuple[AuthzPolicy, ...]) -> None:
        self.policies = policies
        self.enforced = tuple(p for p in policies if not p.dry_run)
        self.audit = tuple(p for p in policies if p.action == AUDIT and not p.dry_run)
        # The dry-run view: every policy as if enforced.
        self.shadow = tuple(p if not p.dry_run else _enforced(p) for p in policies) \
            if any(p.dry_run for p in policies) else ()

    def evaluate(self, a: Attrs, stats: Stats | None) -> Decision:
        d = decide(self.enforced, a)
        what = _describe(a)
        count = stats.authz_decision if stats is not None else _no_count
        count(d.policy or "none", d.action or "none", "allowed" if d.allowed else "denied")
        if not d.allowed:
            _log(f"denied {what}: " + (f"policy {d.policy} ({d.action})" if d.policy
                                       else "no ALLOW policy matched"))
        for p in self.audit:
            if policy_matches(p, a):
                count(p.name, AUDIT, "audited")
                _log(f"audit {what}: matched policy {p.name}")
        if self.shadow:
            s = decide(self.shadow, a)
            result = "dry_run_allowed" if s.allowed else "dry_run_denied"
            count(s.policy or "none", s.action or "none", result)
            if s.allowed != d.allowed or s.policy != d.policy:
                verdict = "allow" if s.allowed else "deny"
                by = f"policy {s.policy} ({s.action})" if s.policy else "no ALLOW policy matched"
                _log(f"dry-run: would {verdict} {what}: {by}")
        return d


def _enforced(p: AuthzPolicy) -> AuthzPolicy:
    return AuthzPolicy(p.name, p.action, p.rules, dry_run=False)


def _no_count(policy: str, action: str, result: str) -> None:
    pass


def _describe(a: Attrs) -> str:
    who = a.principal or f"plaintext {a.source_ip}"
    if a.http:
        return f"{a.method} {a.host}{a.path} from {who} to port {a.dest_port}"
    return f"TCP connection from {who} to port {a.dest_port}"


class _RateLimit:
    """At most ``per_second`` decision lines a second; the rest are summed into the next one."""

    def __init__(self, per_second: int = 20) -> None:
        self.per_second = per_second
        self.window = 0.0
        self.lines = 0
        self.suppressed = 0

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.suppressed:
                log.info("authz: %d more decision lines suppressed", self.suppressed)
            self.window, self.lines, self.suppressed = now, 0, 0
        if self.lines >= self.per_second:
            self.suppressed += 1
            return
        self.lines += 1
        log.info("authz: %s", msg)


_log = _RateLimit()
_engines: tuple[tuple[AuthzPolicy, ...], Engine] | None = None


def engine_for(policies: tuple[AuthzPolicy, ...]) -> Engine | None:
    """The compiled engine of the current config's policies (None: no policy, allow all)."""
    global _engines
    if not policies:
        return None
    cached = _engines
    if cached is not None and cached[0] is policies:
        return cached[1]
    eng = Engine(policies)
    _engines = (policies, eng)
    return eng


class Gate:
    """One inbound connection's attributes, and where the current policies come from."""

    __slots__ = ("policies", "stats", "attrs")

    def __init__(self, policies: Callable[[], tuple[AuthzPolicy, ...]], stats: Stats | None,
                 source_ip: str, peer_spiffe_id: str | None, dest: tuple[str, int],
                 sni: str = "") -> None:
        self.policies = policies
        self.stats = stats
        src = _ip(source_ip)
        dst = _ip(dest[0])
        self.attrs = Attrs(source_ip=str(src) if src else source_ip,
                           principal=principal_of(peer_spiffe_id),
                           dest_ip=str(dst) if dst else dest[0], dest_port=dest[1], sni=sni)


def check_tcp(gate: Gate | None) -> bool:
    """Whether an opaque TCP connection may reach the app."""
    if gate is None:
        return True
    eng = engine_for(gate.policies())
    return eng is None or eng.evaluate(gate.attrs, gate.stats).allowed


def check_http(gate: Gate | None, method: bytes | str, path: bytes | str,
               host: bytes | str | None, headers: Iterable[tuple[bytes | str, bytes | str]]) -> bool:
    """Whether one HTTP request (HTTP/1.1 or HTTP/2, at its head) may reach the app; the
    caller answers False with 403 ``RBAC: access denied`` (gRPC: grpc-status 7). ``host``:
    the :authority, or None to take the Host header."""
    if gate is None:
        return True
    eng = engine_for(gate.policies())
    if eng is None:
        return True
    c = gate.attrs
    hdrs: dict[str, str] = {}
    for name, value in headers:
        n = _text(name).lower()
        if n.startswith(":"):
            continue
        v = _text(value)
        hdrs[n] = f"{hdrs[n]},{v}" if n in hdrs else v
    target = _text(path)
    absolute = split_absolute(target)
    if absolute is not None:  # the URI's authority wins over Host, as in Envoy
        host_text = absolute[0]
    else:
        host_text = _text(host) if host is not None else hdrs.get("host", "")
    a = Attrs(c.source_ip, c.principal, c.dest_ip, c.dest_port, c.sni, True, _text(method),
              normalize_path(target), host_text, hdrs)
    return eng.evaluate(a, gate.stats).allowed


def _text(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v
