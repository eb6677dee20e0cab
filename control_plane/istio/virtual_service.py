"""VirtualService (networking.istio.io v1/v1beta1/v1alpha3) → typed record.

Destinations stay host-level here (host, subset, port); the snapshot builder resolves them
to cluster names because only it knows which services and subsets exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api import model, re2
from control_plane.istio import values as v
from control_plane.istio.values import Notes
from control_plane.resources import resolve_host

# The fields each level implements; everything else present is reported.
SPEC = {"hosts", "http", "tcp", "gateways"}
HTTP = {"name", "match", "route", "redirect", "directResponse", "rewrite", "timeout", "retries", "fault",
        "mirror", "mirrorPercentage", "mirrorPercent", "headers", "corsPolicy"}
MATCH = {"name", "uri", "scheme", "method", "authority", "headers", "withoutHeaders", "queryParams",
         "ignoreUriCase", "port", "sourceLabels", "sourceNamespace", "gateways"}
ROUTE = {"destination", "weight", "headers"}
DEST = {"host", "subset", "port"}
REDIRECT = {"uri", "authority", "scheme", "port", "redirectCode"}
REWRITE = {"uri", "authority", "uriRegexRewrite"}
RETRIES = {"attempts", "perTryTimeout", "retryOn"}
CORS = {"allowOrigins", "allowOrigin", "allowMethods", "allowHeaders", "exposeHeaders", "maxAge",
        "allowCredentials", "unmatchedPreflights"}
TCP = {"match", "route"}
TCP_MATCH = {"port", "sourceLabels", "sourceNamespace", "gateways", "destinationSubnets"}
# Envoy conditions Remora knows but does not implement: reported, not rejected.
RETRY_ON_KNOWN = {"reset-before-request", "envoy-ratelimited", "retriable-headers", "http3-post-connect-failure"}
MESH_GATEWAY = "mesh"


@dataclass(frozen=True)
class RouteDestination:
    host: str
    subset: str | None
    port: int | None
    weight: int = 100
    headers: model.HeaderPolicy | None = None


@dataclass(frozen=True)
class VsRoute:
    """An HTTP route with its destinations still host-level; the rest is the model's."""

    route: model.HttpRoute  # destinations and mirror empty: the builder fills them
    destinations: tuple[RouteDestination, ...]
    mirror: RouteDestination | None = None
    mesh: bool = True  # False: every match is for gateways only; the sidecars skip this route


@dataclass(frozen=True)
class VsTcpRoute:
    name: str
    matches: tuple[model.TcpMatch, ...]
    destinations: tuple[RouteDestination, ...]
    mesh: bool = True


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]  # resolved names, or wildcard patterns such as "*" or "*.example.com"
    routes: tuple[VsRoute, ...]
    tcp_routes: tuple[VsTcpRoute, ...] = ()
    mesh: bool = True  # False: bound only to gateways, so no sidecar applies it (as in Istio)


def _gateways(raw: Any, path: str, notes: Notes) -> bool:
    """True when the sidecars ("mesh") are among the gateways; other gateways are reported."""
    gws = [v.string(g, f"{path}[{i}]") for i, g in enumerate(v.listing(raw, path))]
    others = [g for g in gws if g != MESH_GATEWAY]
    if others:
        notes.add(path, f"names gateways {others}; Gateway is not implemented, only 'mesh' (the sidecars) applies")
    return not gws or MESH_GATEWAY in gws


def _host(raw: Any, path: str, namespace: str) -> str:
    host = v.string(raw, path).lower()
    return host if "*" in host else resolve_host(host, namespace)


def _match(raw: Any, path: str, notes: Notes) -> model.RouteMatch | None:
    m = v.mapping(raw, path)
    unknown = sorted(set(m) - MATCH - {"statPrefix"})
    if unknown:
        # A condition that is not read would make the match wider than written: refuse it.
        raise ValueError(f"{path}.{unknown[0]}: not a match condition (one of {', '.join(sorted(MATCH))})")
    notes.extra(m, MATCH, path)
    sm = {k: v.string_match(m[k], f"{path}.{k}", notes) for k in ("uri", "scheme", "method", "authority")
          if k in m}
    maps: dict[str, dict[str, model.StringMatch]] = {}
    for key, attr in (("headers", "headers"), ("withoutHeaders", "without_headers"),
                      ("queryParams", "query_params")):
        raw_map = v.mapping(m.get(key) or {}, f"{path}.{key}")
        lower = key != "queryParams"  # header names are case-insensitive; query keys are not
        maps[attr] = {
            (str(name).lower() if lower else str(name)):
                v.string_match(hm, f"{path}.{key}.{name}", notes, presence=True)
            for name, hm in raw_map.items()
        }
    if "gateways" in m and not _gateways(m["gateways"], f"{path}.gateways", notes):
        return None  # a match for gateways only: the sidecars never see it
    return model.RouteMatch(
        name=v.string(m["name"], f"{path}.name") if "name" in m else "",
        uri=sm.get("uri"), scheme=sm.get("scheme"), method=sm.get("method"), authority=sm.get("authority"),
        headers=maps["headers"], without_headers=maps["without_headers"], query_params=maps["query_params"],
        ignore_uri_case=v.boolean(m["ignoreUriCase"], f"{path}.ignoreUriCase") if "ignoreUriCase" in m else False,
        port=v.port(m["port"], f"{path}.port") if "port" in m else None,
        source_labels=v.string_map(m.get("sourceLabels") or {}, f"{path}.sourceLabels"),
        source_namespace=v.string(m["sourceNamespace"], f"{path}.sourceNamespace") if "sourceNamespace" in m
        else None,
    )


def _destination(raw: Any, path: str, namespace: str, notes: Notes) -> RouteDestination:
    d = v.mapping(raw, path)
    notes.extra(d, DEST, path)
    host = resolve_host(v.string(d.get("host"), f"{path}.host"), namespace)
    subset = v.string(d["subset"], f"{path}.subset") if "subset" in d else None
    number = None
    if "port" in d:
        p = v.mapping(d["port"], f"{path}.port")
        notes.extra(p, {"number"}, f"{path}.port")
        number = v.port(p.get("number"), f"{path}.port.number")
    return RouteDestination(host, subset, number)


def _header_ops(raw: Any, path: str, notes: Notes) -> model.HeaderOps:
    h = v.mapping(raw, path)
    notes.extra(h, {"set", "add", "remove"}, path)
    lower = {k.lower(): val for k, val in v.string_map(h.get("set") or {}, f"{path}.set").items()}
    add = {k.lower(): val for k, val in v.string_map(h.get("add") or {}, f"{path}.add").items()}
    remove = tuple(v.string(x, f"{path}.remove[{i}]").lower()
                   for i, x in enumerate(v.listing(h.get("remove") or [], f"{path}.remove")))
    return model.HeaderOps(set=lower, add=add, remove=remove)


def _headers(raw: Any, path: str, notes: Notes) -> model.HeaderPolicy:
    h = v.mapping(raw, path)
    notes.extra(h, {"request", "response"}, path)
    return model.HeaderPolicy(
        request=_header_ops(h["request"], f"{path}.request", notes) if "request" in h else None,
        response=_header_ops(h["response"], f"{path}.response", notes) if "response" in h else None,
    )


def _route_destination(raw: Any, path: str, namespace: str, notes: Notes) -> RouteDestination:
    r = v.mapping(raw, path)
    notes.extra(r, ROUTE, path)
    d = _destination(r.get("destination"), f"{path}.destination", namespace, notes)
    weight = v.integer(r["weight"], f"{path}.weight", 0, 100) if "weight" in r else 100
    headers = _headers(r["headers"], f"{path}.headers", notes) if "headers" in r else None
    return RouteDestination(d.host, d.subset, d.port, weight, headers)


def _retries(raw: Any, path: str, notes: Notes) -> model.RetryPolicy:
    r = v.mapping(raw, path)
    notes.extra(r, RETRIES, path)
    attempts = v.integer(r.get("attempts", 0), f"{path}.attempts", 0, 1000)
    per_try = v.duration(r["perTryTimeout"], f"{path}.perTryTimeout", allow_zero=True) if "perTryTimeout" in r \
        else 0.0
    policy = model.RetryPolicy(attempts=attempts, per_try_timeout=per_try or None)
    if "retryOn" not in r:
        return policy
    conditions: list[str] = []
    codes: list[int] = []
    for token in (t.strip() for t in v.string(r["retryOn"], f"{path}.retryOn").split(",")):
        if not token:
            continue
        if token.isdigit():
            codes.append(v.integer(int(token), f"{path}.retryOn ({token})", 100, 599))
        elif token in model.RETRY_ON_HTTP or token in model.RETRY_ON_GRPC:
            conditions.append(token)
        elif token in RETRY_ON_KNOWN:
            notes.add(f"{path}.retryOn", f"condition {token!r} is not implemented yet")
        else:
            raise ValueError(f"{path}.retryOn: {token!r} is not a retry condition (Envoy's names, "
                             "e.g. 5xx, connect-failure, unavailable) nor an HTTP status")
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")  # Istio adds it for numeric entries
    return model.RetryPolicy(attempts, per_try or None, tuple(conditions), tuple(codes))


def _fault(raw: Any, path: str, notes: Notes) -> model.Fault:
    f = v.mapping(raw, path)
    notes.extra(f, {"delay", "abort"}, path)
    delay = abort = None
    if "delay" in f:
        p = f"{path}.delay"
        d = v.mapping(f["delay"], p)
        notes.extra(d, {"fixedDelay", "percentage", "percent"}, p)
        delay = model.FaultDelay(v.duration(d.get("fixedDelay"), f"{p}.fixedDelay", allow_zero=True),
                                 _fault_percent(d, p))
    if "abort" in f:
        p = f"{path}.abort"
        a = v.mapping(f["abort"], p)
        notes.extra(a, {"httpStatus", "grpcStatus", "percentage"}, p)
        if ("httpStatus" in a) == ("grpcStatus" in a):
            raise ValueError(f"{p}: set exactly one of httpStatus, grpcStatus")
        http = v.integer(a["httpStatus"], f"{p}.httpStatus", 200, 599) if "httpStatus" in a else None
        grpc = None
        if "grpcStatus" in a:
            name = v.string(a["grpcStatus"], f"{p}.grpcStatus")
            if name not in model.GRPC_CODES:
                raise ValueError(f"{p}.grpcStatus: {name!r} is not a gRPC status name such as UNAVAILABLE")
            grpc = model.GRPC_CODES[name]
        abort = model.FaultAbort(http, grpc, _fault_percent(a, p))
    return model.Fault(delay, abort)


def _fault_percent(obj: Mapping[str, Any], path: str) -> float:
    if "percentage" in obj:
        return v.percent(obj["percentage"], f"{path}.percentage")
    if "percent" in obj:  # deprecated integer form
        return float(v.integer(obj["percent"], f"{path}.percent", 0, 100))
    return 100.0


def _redirect(raw: Any, path: str, notes: Notes) -> model.Redirect:
    r = v.mapping(raw, path)
    notes.extra(r, REDIRECT, path)
    code = v.integer(r.get("redirectCode", 301), f"{path}.redirectCode")
    if code not in (301, 302, 303, 307, 308):
        raise ValueError(f"{path}.redirectCode: {code} is not one of 301, 302, 303, 307, 308")
    return model.Redirect(
        uri=v.string(r["uri"], f"{path}.uri") if "uri" in r else None,
        authority=v.string(r["authority"], f"{path}.authority") if "authority" in r else None,
        scheme=v.string(r["scheme"], f"{path}.scheme") if "scheme" in r else None,
        port=v.port(r["port"], f"{path}.port") if "port" in r else None,
        code=code,
    )


def _rewrite(raw: Any, path: str, notes: Notes) -> model.Rewrite:
    r = v.mapping(raw, path)
    notes.extra(r, REWRITE, path)
    regex = None
    if "uriRegexRewrite" in r:
        p = f"{path}.uriRegexRewrite"
        rr = v.mapping(r["uriRegexRewrite"], p)
        notes.extra(rr, {"match", "rewrite"}, p)
        pattern = v.string(rr.get("match"), f"{p}.match")
        re2.check(pattern, f"{p}.match")
        regex = model.RegexRewrite(pattern, v.string(rr.get("rewrite"), f"{p}.rewrite", empty=True))
        if "uri" in r:
            raise ValueError(f"{path}: set only one of uri, uriRegexRewrite")
    return model.Rewrite(
        uri=v.string(r["uri"], f"{path}.uri", empty=True) if "uri" in r else None,
        authority=v.string(r["authority"], f"{path}.authority") if "authority" in r else None,
        uri_regex=regex,
    )


def _cors(raw: Any, path: str, notes: Notes) -> model.CorsPolicy:
    c = v.mapping(raw, path)
    notes.extra(c, CORS, path)

    def names(key: str) -> tuple[str, ...]:
        return tuple(v.string(x, f"{path}.{key}[{i}]") for i, x in enumerate(v.listing(c.get(key) or [], f"{path}.{key}")))

    origins = [v.string_match(o, f"{path}.allowOrigins[{i}]", notes)
               for i, o in enumerate(v.listing(c.get("allowOrigins") or [], f"{path}.allowOrigins"))]
    origins += [model.StringMatch(exact=o) for o in names("allowOrigin")]  # deprecated form
    preflights = c.get("unmatchedPreflights", "FORWARD")
    if preflights not in ("FORWARD", "IGNORE", "UNSPECIFIED"):
        raise ValueError(f"{path}.unmatchedPreflights: {preflights!r} is not FORWARD or IGNORE")
    return model.CorsPolicy(
        allow_origins=tuple(origins), allow_methods=names("allowMethods"),
        allow_headers=names("allowHeaders"), expose_headers=names("exposeHeaders"),
        max_age=v.duration(c["maxAge"], f"{path}.maxAge", allow_zero=True) if "maxAge" in c else None,
        allow_credentials=v.boolean(c["allowCredentials"], f"{path}.allowCredentials")
        if "allowCredentials" in c else None,
        unmatched_preflights_forward=preflights != "IGNORE",
    )


def _http_route(h: Mapping[str, Any], path: str, name: str, ns: str, notes: Notes) -> VsRoute:
    notes.extra(h, HTTP, path)
    raw_matches = v.listing(h.get("match") or [], f"{path}.match")
    parsed = [_match(m, f"{path}.match[{j}]", notes) for j, m in enumerate(raw_matches)]
    matches = tuple(m for m in parsed if m is not None)
    dests = tuple(_route_destination(r, f"{path}.route[{j}]", ns, notes)
                  for j, r in enumerate(v.listing(h.get("route") or [], f"{path}.route")))
    redirect = _redirect(h["redirect"], f"{path}.redirect", notes) if "redirect" in h else None
    direct = None
    if "directResponse" in h:
        dp = f"{path}.directResponse"
        dr = v.mapping(h["directResponse"], dp)
        notes.extra(dr, {"status", "body"}, dp)
        body = v.mapping(dr.get("body") or {}, f"{dp}.body")
        notes.extra(body, {"string"}, f"{dp}.body")
        direct = model.DirectResponse(v.integer(dr.get("status"), f"{dp}.status", 200, 599),
                                      v.string(body.get("string", ""), f"{dp}.body.string", empty=True))
    actions = [k for k, x in (("route", dests), ("redirect", redirect), ("directResponse", direct)) if x]
    if len(actions) != 1:
        raise ValueError(f"{path}: set exactly one of route, redirect, directResponse"
                         + (f" (got {', '.join(actions)})" if actions else ""))
    if len(dests) > 1 and sum(d.weight for d in dests) == 0:
        raise ValueError(f"{path}.route: weights add up to 0")
    mirror = _destination(h["mirror"], f"{path}.mirror", ns, notes) if "mirror" in h else None
    if "mirrorPercentage" in h:
        mirror_percent = v.percent(h["mirrorPercentage"], f"{path}.mirrorPercentage")
    elif "mirrorPercent" in h:
        mirror_percent = float(v.integer(h["mirrorPercent"], f"{path}.mirrorPercent", 0, 100))
    else:
        mirror_percent = 100.0
    timeout = v.duration(h["timeout"], f"{path}.timeout", allow_zero=True) if "timeout" in h else 0.0
    route = model.HttpRoute(
        name=v.string(h["name"], f"{path}.name") if "name" in h else name,
        matches=matches,
        timeout=timeout or None,  # 0s: no timeout, as in Istio
        retries=_retries(h["retries"], f"{path}.retries", notes) if "retries" in h else None,
        redirect=redirect, direct_response=direct,
        rewrite=_rewrite(h["rewrite"], f"{path}.rewrite", notes) if "rewrite" in h else None,
        fault=_fault(h["fault"], f"{path}.fault", notes) if "fault" in h else None,
        mirror_percent=mirror_percent,
        headers=_headers(h["headers"], f"{path}.headers", notes) if "headers" in h else None,
        cors=_cors(h["corsPolicy"], f"{path}.corsPolicy", notes) if "corsPolicy" in h else None,
    )
    return VsRoute(route, dests, mirror, mesh=not raw_matches or bool(matches))


def _tcp_route(t: Mapping[str, Any], path: str, name: str, ns: str, notes: Notes) -> VsTcpRoute:
    notes.extra(t, TCP, path)
    matches = []
    for j, raw in enumerate(v.listing(t.get("match") or [], f"{path}.match")):
        mp = f"{path}.match[{j}]"
        m = v.mapping(raw, mp)
        notes.extra(m, TCP_MATCH, mp)
        if "gateways" in m and not _gateways(m["gateways"], f"{mp}.gateways", notes):
            continue  # gateways only
        if "destinationSubnets" in m:
            # Not evaluated: keeping the rest would match more than written, so the match is left out.
            notes.add(f"{mp}.destinationSubnets", "is not implemented yet; this match is left out")
            continue
        matches.append(model.TcpMatch(
            port=v.port(m["port"], f"{mp}.port") if "port" in m else None,
            source_labels=v.string_map(m.get("sourceLabels") or {}, f"{mp}.sourceLabels"),
            source_namespace=v.string(m["sourceNamespace"], f"{mp}.sourceNamespace")
            if "sourceNamespace" in m else None,
        ))
    dests = tuple(_route_destination(r, f"{path}.route[{j}]", ns, notes)
                  for j, r in enumerate(v.listing(t.get("route") or [], f"{path}.route")))
    if not dests:
        raise ValueError(f"{path}.route: at least one destination is needed")
    if sum(d.weight for d in dests) == 0:
        raise ValueError(f"{path}.route: weights add up to 0")
    raw_count = len(v.listing(t.get("match") or [], f"{path}.match"))
    return VsTcpRoute(name, tuple(matches), dests, mesh=not raw_count or bool(matches))


def parse_virtual_service(obj: Mapping[str, Any]) -> tuple[VirtualService, list[str]]:
    meta, ns, notes, spec = v.open_resource("VirtualService", obj, SPEC)
    hosts = tuple(_host(h, f"spec.hosts[{i}]", ns) for i, h in enumerate(v.listing(spec.get("hosts") or [],
                                                                                     "spec.hosts")))
    if not hosts:
        raise ValueError("spec.hosts: at least one host is needed")
    mesh = _gateways(spec["gateways"], "spec.gateways", notes) if "gateways" in spec else True
    routes = tuple(
        _http_route(v.mapping(raw, f"spec.http[{i}]"), f"spec.http[{i}]", f"{meta['name']}.{i}", ns, notes)
        for i, raw in enumerate(v.listing(spec.get("http") or [], "spec.http"))
    )
    tcp = tuple(
        _tcp_route(v.mapping(raw, f"spec.tcp[{i}]"), f"spec.tcp[{i}]", f"{meta['name']}.tcp.{i}", ns, notes)
        for i, raw in enumerate(v.listing(spec.get("tcp") or [], "spec.tcp"))
    )
    return VirtualService(meta["name"], ns, hosts, routes, tcp, mesh), notes.items
