"""AuthorizationPolicy (security.istio.io v1 and v1beta1) → a typed record and its scope.

The record carries the policy exactly as a proxy evaluates it (``model.AuthzPolicy``) plus
what decides which workloads it applies to (namespace, selector, targetRefs); the snapshot
builder does the selection. Invalid shapes raise ValueError naming the field path, so a proxy
never NACKs a policy. What Remora cannot evaluate (CUSTOM, requestPrincipals, request.auth.*)
is reported and fails closed (see docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api import model
from control_plane.istio.values import Notes as _Notes
from control_plane.istio.values import listing as _list
from control_plane.istio.values import mapping as _mapping

DRY_RUN_ANNOTATION = "istio.io/dry-run"
SPEC = {"selector", "targetRef", "targetRefs", "action", "rules", "provider"}
RULE = {"from", "to", "when"}
SOURCE = {"principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
          "remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals"}
OPERATION = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
JWT_FIELDS = ("requestPrincipals", "notRequestPrincipals")
# Istio field name → model field name.
_SOURCE_FIELDS = {"principals": "principals", "notPrincipals": "not_principals",
                  "namespaces": "namespaces", "notNamespaces": "not_namespaces",
                  "ipBlocks": "ip_blocks", "notIpBlocks": "not_ip_blocks",
                  "remoteIpBlocks": "remote_ip_blocks", "notRemoteIpBlocks": "not_remote_ip_blocks"}
_OP_FIELDS = {"hosts": "hosts", "notHosts": "not_hosts", "methods": "methods",
              "notMethods": "not_methods", "paths": "paths", "notPaths": "not_paths"}
_CIDR_FIELDS = {"ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"}


@dataclass(frozen=True)
class TargetRef:
    kind: str
    group: str
    name: str


@dataclass(frozen=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    selector: Mapping[str, str] | None  # None: every workload of the namespace (or the mesh)
    target_refs: tuple[TargetRef, ...]
    policy: model.AuthzPolicy


def _field_list(m: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """An optional list field: absent or null is empty, anything else must be a list."""
    value = m.get(key)
    return [] if value is None else _list(value, path)


def _strings(value: Any, path: str) -> tuple[str, ...]:
    items = _list(value, path)
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{path}[{i}]: expected a non-empty string, got {v!r}")
    return tuple(items)


def _ports(value: Any, path: str) -> tuple[int, ...]:
    out = []
    for i, v in enumerate(_list(value, path)):
        s = str(v) if isinstance(v, int | str) and not isinstance(v, bool) else ""
        if not s.isdigit() or not 1 <= int(s) <= 65535:
            raise ValueError(f"{path}[{i}]: {v!r} is not a port number")
        out.append(int(s))
    return tuple(out)


def _cidr(value: str, path: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{path}: {value!r} is not an IP address or CIDR") from None


def _source(raw: Any, path: str, notes: _Notes) -> tuple[model.AuthzSource, bool]:
    """(source, needs JWT): requestPrincipals cannot be evaluated without JWT support."""
    outer = _mapping(raw, path)
    notes.extra(outer, {"source"}, path)
    src = _mapping(outer.get("source") or {}, f"{path}.source")
    notes.extra(src, SOURCE, f"{path}.source")
    kwargs: dict[str, tuple[str, ...]] = {}
    for field, attr in _SOURCE_FIELDS.items():
        if field in src:
            values = _strings(src[field], f"{path}.source.{field}")
            if field in _CIDR_FIELDS:
                for i, v in enumerate(values):
                    _cidr(v, f"{path}.source.{field}[{i}]")
            kwargs[attr] = values
    jwt = [f for f in JWT_FIELDS if f in src]
    for f in jwt:
        _strings(src[f], f"{path}.source.{f}")
        notes.add(f"{path}.source.{f}", "needs JWT (RequestAuthentication), which is not "
                  "implemented: an ALLOW rule with it never matches, a DENY rule applies without it")
    return model.AuthzSource(**kwargs), bool(jwt)


def _operation(raw: Any, path: str, notes: _Notes) -> model.AuthzOperation:
    outer = _mapping(raw, path)
    notes.extra(outer, {"operation"}, path)
    op = _mapping(outer.get("operation") or {}, f"{path}.operation")
    notes.extra(op, OPERATION, f"{path}.operation")
    kwargs: dict[str, Any] = {}
    for field, attr in _OP_FIELDS.items():
        if field in op:
            kwargs[attr] = _strings(op[field], f"{path}.operation.{field}")
    if "ports" in op:
        kwargs["ports"] = _ports(op["ports"], f"{path}.operation.ports")
    if "notPorts" in op:
        kwargs["not_ports"] = _ports(op["notPorts"], f"{path}.operation.notPorts")
    return model.AuthzOperation(**kwargs)


def _condition(raw: Any, path: str, notes: _Notes) -> tuple[model.AuthzCondition | None, bool]:
    """(condition, needs JWT); request.auth.* keys are reported and dropped."""
    c = _mapping(raw, path)
    notes.extra(c, {"key", "values", "notValues"}, path)
    key = c.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"{path}.key: required")
    values = _strings(c["values"], f"{path}.values") if "values" in c else ()
    not_values = _strings(c["notValues"], f"{path}.notValues") if "notValues" in c else ()
    if not values and not not_values:
        raise ValueError(f"{path}: one of values or notValues is required")
    if key.startswith("request.auth."):
        notes.add(f"{path}.key", f"{key} needs JWT (RequestAuthentication), which is not "
                  "implemented: an ALLOW rule with it never matches, a DENY rule applies without it")
        return None, True
    if key not in model.AUTHZ_CONDITION_KEYS and model.authz_header_name(key) is None:
        raise ValueError(f"{path}.key: {key!r} is not a supported key (request.headers[<name>], "
                         f"{', '.join(model.AUTHZ_CONDITION_KEYS)})")
    for i, v in enumerate((*values, *not_values)):
        if key in ("source.ip", "remote.ip", "destination.ip"):
            _cidr(v, f"{path}.values[{i}]")
        elif key == "destination.port" and not (v.isdigit() and 1 <= int(v) <= 65535):
            raise ValueError(f"{path}.values[{i}]: {v!r} is not a port number")
    return model.AuthzCondition(key, values, not_values), False


def _rule(raw: Any, path: str, notes: _Notes) -> model.AuthzRule:
    r = _mapping(raw if raw is not None else {}, path)
    notes.extra(r, RULE, path)
    jwt = False
    sources = []
    for i, s in enumerate(_field_list(r, "from", f"{path}.from")):
        src, needs = _source(s, f"{path}.from[{i}]", notes)
        sources.append(src)
        jwt |= needs
    ops = tuple(_operation(o, f"{path}.to[{i}]", notes)
                for i, o in enumerate(_field_list(r, "to", f"{path}.to")))
    conds = []
    for i, c in enumerate(_field_list(r, "when", f"{path}.when")):
        cond, needs = _condition(c, f"{path}.when[{i}]", notes)
        jwt |= needs
        if cond is not None:
            conds.append(cond)
    return model.AuthzRule(tuple(sources), ops, tuple(conds), unevaluable=jwt)


def _target_refs(spec: Mapping[str, Any], notes: _Notes) -> tuple[TargetRef, ...]:
    raws = [("spec.targetRef", spec["targetRef"])] if "targetRef" in spec else []
    raws += [(f"spec.targetRefs[{i}]", t)
             for i, t in enumerate(_field_list(spec, "targetRefs", "spec.targetRefs"))]
    refs = []
    for path, raw in raws:
        t = _mapping(raw, path)
        notes.extra(t, {"kind", "group", "name", "namespace"}, path)
        kind, group, name = t.get("kind"), t.get("group", ""), t.get("name")
        if not isinstance(kind, str) or not kind or not isinstance(name, str) or not name:
            raise ValueError(f"{path}: kind and name are required")
        if kind == "Service" and group in ("", "core"):
            refs.append(TargetRef(kind, "", name))
        else:
            notes.add(path, f"{group or 'core'}/{kind} is not a target Remora's sidecars "
                      "implement (only Service): the policy applies to no workload through it")
            refs.append(TargetRef(kind, str(group), name))
    return tuple(refs)


def parse_authorization_policy(obj: Mapping[str, Any]) -> tuple[AuthorizationPolicy, list[str]]:
    meta = obj["metadata"]
    notes = _Notes("AuthorizationPolicy", meta)
    ns = meta.get("namespace", "default")
    spec = _mapping(obj.get("spec") or {}, "spec")
    notes.extra(spec, SPEC, "spec")
    if "selector" in spec and ("targetRef" in spec or "targetRefs" in spec):
        raise ValueError("spec: selector and targetRefs cannot both be set")
    selector = None
    if spec.get("selector") is not None:
        sel = _mapping(spec["selector"], "spec.selector")
        notes.extra(sel, {"matchLabels"}, "spec.selector")
        selector = {str(k): str(v) for k, v in _mapping(sel.get("matchLabels") or {},
                                                        "spec.selector.matchLabels").items()}
    refs = _target_refs(spec, notes)
    action = spec.get("action", model.ALLOW)
    if action not in model.AUTHZ_ACTIONS:
        raise ValueError(f"spec.action: {action!r} is not one of ALLOW, DENY, AUDIT, CUSTOM")
    if "provider" in spec and action != model.CUSTOM:
        raise ValueError("spec.provider: only valid with action CUSTOM")
    rules = tuple(_rule(r, f"spec.rules[{i}]", notes)
                  for i, r in enumerate(_field_list(spec, "rules", "spec.rules")))
    annotations = _mapping(meta.get("annotations") or {}, "metadata.annotations")
    dry = str(annotations.get(DRY_RUN_ANNOTATION, "false")).lower()
    if dry not in ("true", "false"):
        raise ValueError(f"metadata.annotations[{DRY_RUN_ANNOTATION}]: {dry!r} is not true or false")
    if action == model.CUSTOM:
        # No external authorizer to ask: the requests it would send there are denied (fail
        # closed), evaluated first as Istio does.
        notes.add("spec.action", "CUSTOM (external authorization) is not implemented: requests "
                  "its rules match are denied")
        if dry == "true":
            notes.add(f"metadata.annotations[{DRY_RUN_ANNOTATION}]", "is not supported with CUSTOM "
                      "(as in Istio): the policy is enforced")
            dry = "false"
    policy = model.AuthzPolicy(f"{ns}/{meta['name']}", action, rules, dry_run=dry == "true")
    return AuthorizationPolicy(meta["name"], ns, selector, refs, policy), notes.items
