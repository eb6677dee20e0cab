"""Istio-shaped resources (VirtualService, DestinationRule, PeerAuthentication) → typed records.

Each parser returns the record and the list of fields present in the resource that Remora does
not implement yet; those notes travel in every snapshot (``ProxyConfig.unsupported``), the
control-plane log and ``remoractl proxy-status``, so nothing is dropped silently. A resource
that is invalid (bad type, bad value) raises ValueError naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api import model
from control_plane.resources import resolve_host

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# The fields each level implements; everything else present is reported.
VS_SPEC = {"hosts", "http"}
VS_HTTP = {"name", "match", "route", "timeout", "retries"}
VS_MATCH = {"uri", "method", "headers", "name"}
VS_ROUTE = {"destination", "weight"}
VS_DEST = {"host", "subset", "port"}
VS_RETRIES = {"attempts", "perTryTimeout", "retryOn"}
DR_SPEC = {"host", "subsets"}
DR_SUBSET = {"name", "labels"}
PA_SPEC = {"selector", "mtls", "portLevelMtls"}


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    subsets: tuple[Subset, ...]


@dataclass(frozen=True)
class RouteDestination:
    host: str
    subset: str | None
    port: int | None
    weight: int


@dataclass(frozen=True)
class VsRoute:
    name: str
    matches: tuple[model.RouteMatch, ...]
    destinations: tuple[RouteDestination, ...]
    timeout: float | None
    retries: model.RetryPolicy | None


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    routes: tuple[VsRoute, ...]


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str
    selector: Mapping[str, str] | None
    mode: str | None  # None: UNSET, inherit from the parent level
    port_modes: Mapping[int, str]


class _Notes:
    """Collects "Kind/ns/name: path" for fields that are present but not implemented."""

    def __init__(self, kind: str, meta: Mapping[str, Any]) -> None:
        self.prefix = f"{kind}/{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
        self.items: list[str] = []

    def extra(self, obj: Mapping[str, Any], implemented: set[str], path: str) -> None:
        for k in sorted(set(obj) - implemented):
            self.items.append(f"{self.prefix}: {path}.{k} is not implemented yet")

    def add(self, path: str, what: str) -> None:
        self.items.append(f"{self.prefix}: {path} {what}")


def parse_duration(value: Any, path: str) -> float:
    """Istio durations ("5s", "250ms", "1m") in seconds."""
    m = _DURATION.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{path}: {value!r} is not a positive duration such as 5s or 250ms")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _string_match(value: Any, path: str, notes: _Notes) -> tuple[str | None, str | None]:
    """(exact, prefix) of an Istio StringMatch; regex is reported as not implemented."""
    m = _mapping(value, path)
    notes.extra(m, {"exact", "prefix"}, path)
    return m.get("exact"), m.get("prefix")


def _parse_match(raw: Any, path: str, notes: _Notes) -> model.RouteMatch:
    m = _mapping(raw, path)
    notes.extra(m, VS_MATCH, path)
    exact = prefix = method = None
    if "uri" in m:
        exact, prefix = _string_match(m["uri"], f"{path}.uri", notes)
    if "method" in m:
        method, method_prefix = _string_match(m["method"], f"{path}.method", notes)
        if method_prefix:
            notes.add(f"{path}.method.prefix", "is not implemented yet")
    headers = {}
    for name, hm in _mapping(m.get("headers") or {}, f"{path}.headers").items():
        value, hprefix = _string_match(hm, f"{path}.headers.{name}", notes)
        if hprefix:
            notes.add(f"{path}.headers.{name}.prefix", "is not implemented yet")
        if value is not None:
            headers[name.lower()] = value
    return model.RouteMatch(path_exact=exact, path_prefix=prefix, method=method, headers=headers)


def _parse_destination(raw: Any, path: str, namespace: str, notes: _Notes) -> RouteDestination:
    r = _mapping(raw, path)
    notes.extra(r, VS_ROUTE, path)
    d = _mapping(r.get("destination"), f"{path}.destination")
    notes.extra(d, VS_DEST, f"{path}.destination")
    if not isinstance(d.get("host"), str) or not d["host"]:
        raise ValueError(f"{path}.destination.host: required")
    port = (d.get("port") or {}).get("number")
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        raise ValueError(f"{path}.destination.port.number: {port!r} is not a port")
    weight = r.get("weight", 100)
    if not isinstance(weight, int) or weight < 0:
        raise ValueError(f"{path}.weight: {weight!r} is not a non-negative integer")
    return RouteDestination(resolve_host(d["host"], namespace), d.get("subset"), port, weight)


def _parse_retries(raw: Any, path: str, notes: _Notes) -> model.RetryPolicy:
    r = _mapping(raw, path)
    notes.extra(r, VS_RETRIES, path)
    attempts = r.get("attempts", 0)
    if not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"{path}.attempts: {attempts!r} is not a non-negative integer")
    per_try = parse_duration(r["perTryTimeout"], f"{path}.perTryTimeout") if "perTryTimeout" in r else None
    retry_on = tuple(s.strip() for s in str(r["retryOn"]).split(",") if s.strip()) if "retryOn" in r else (
        model.RetryPolicy().retry_on
    )
    return model.RetryPolicy(attempts=attempts, per_try_timeout=per_try, retry_on=retry_on)


def _open(kind: str, obj: Mapping[str, Any], implemented: set[str]):
    """(metadata, namespace, notes, spec) of one resource, with its unimplemented spec fields noted."""
    meta = obj["metadata"]
    notes = _Notes(kind, meta)
    spec = _mapping(obj.get("spec") or {}, "spec")
    notes.extra(spec, implemented, "spec")
    return meta, meta.get("namespace", "default"), notes, spec


def parse_virtual_service(obj: Mapping[str, Any]) -> tuple[VirtualService, list[str]]:
    meta, ns, notes, spec = _open("VirtualService", obj, VS_SPEC)
    hosts = tuple(resolve_host(h, ns) for h in _list(spec.get("hosts") or [], "spec.hosts"))
    if not hosts:
        raise ValueError("spec.hosts: at least one host is needed")
    routes = []
    for i, raw in enumerate(_list(spec.get("http") or [], "spec.http")):
        path = f"spec.http[{i}]"
        h = _mapping(raw, path)
        notes.extra(h, VS_HTTP, path)
        matches = tuple(_parse_match(m, f"{path}.match[{j}]", notes)
                        for j, m in enumerate(_list(h.get("match") or [], f"{path}.match")))
        dests = tuple(_parse_destination(r, f"{path}.route[{j}]", ns, notes)
                      for j, r in enumerate(_list(h.get("route") or [], f"{path}.route")))
        if not dests:
            # A route with only redirect/direct_response etc: reported above, nothing to route.
            continue
        if len(dests) > 1 and sum(d.weight for d in dests) == 0:
            raise ValueError(f"{path}.route: weights add up to 0")
        timeout = parse_duration(h["timeout"], f"{path}.timeout") if "timeout" in h else None
        retries = _parse_retries(h["retries"], f"{path}.retries", notes) if "retries" in h else None
        routes.append(VsRoute(h.get("name") or f"{meta['name']}.{i}", matches, dests, timeout, retries))
    return VirtualService(meta["name"], ns, hosts, tuple(routes)), notes.items


def parse_destination_rule(obj: Mapping[str, Any]) -> tuple[DestinationRule, list[str]]:
    meta, ns, notes, spec = _open("DestinationRule", obj, DR_SPEC)
    if not isinstance(spec.get("host"), str) or not spec["host"]:
        raise ValueError("spec.host: required")
    subsets = []
    for i, raw in enumerate(_list(spec.get("subsets") or [], "spec.subsets")):
        s = _mapping(raw, f"spec.subsets[{i}]")
        notes.extra(s, DR_SUBSET, f"spec.subsets[{i}]")
        if not isinstance(s.get("name"), str) or not s["name"]:
            raise ValueError(f"spec.subsets[{i}].name: required")
        labels = _mapping(s.get("labels") or {}, f"spec.subsets[{i}].labels")
        subsets.append(Subset(s["name"], {str(k): str(v) for k, v in labels.items()}))
    return DestinationRule(meta["name"], ns, resolve_host(spec["host"], ns), tuple(subsets)), notes.items


def _mode(raw: Any, path: str) -> str | None:
    mode = (_mapping(raw, path).get("mode") or "UNSET")
    if mode == "UNSET":
        return None
    if mode not in model.MTLS_MODES:
        raise ValueError(f"{path}.mode: {mode!r} is not one of UNSET, {', '.join(model.MTLS_MODES)}")
    return mode


def parse_peer_authentication(obj: Mapping[str, Any]) -> tuple[PeerAuthentication, list[str]]:
    meta, ns, notes, spec = _open("PeerAuthentication", obj, PA_SPEC)
    selector = None
    if spec.get("selector"):
        sel = _mapping(spec["selector"], "spec.selector")
        notes.extra(sel, {"matchLabels"}, "spec.selector")
        selector = {str(k): str(v) for k, v in (sel.get("matchLabels") or {}).items()}
    mode = _mode(spec["mtls"], "spec.mtls") if "mtls" in spec else None
    ports: dict[int, str] = {}
    for port, raw in _mapping(spec.get("portLevelMtls") or {}, "spec.portLevelMtls").items():
        if not str(port).isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"spec.portLevelMtls: key {port!r} is not a port")
        pmode = _mode(raw, f"spec.portLevelMtls[{port}]")
        if pmode:
            ports[int(port)] = pmode
    if ports and selector is None:
        # Istio ignores port-level settings without a workload selector; say so.
        notes.add("spec.portLevelMtls", "is ignored without spec.selector (as in Istio)")
        ports = {}
    return PeerAuthentication(meta["name"], ns, selector, mode, ports), notes.items
