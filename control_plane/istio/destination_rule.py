"""DestinationRule → typed record, and the effective policy of one cluster.

A traffic policy is kept as parts (each of loadBalancer, connectionPool, outlierDetection and
tls is set or not) so the builder can overlay them the way Istio does: the rule's policy, then
its portLevelSettings for the cluster's port, then the subset's policy, then the subset's
portLevelSettings, each part replacing the one before as a whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.api import model
from control_plane.istio import values as v
from control_plane.istio.values import Notes
from control_plane.resources import resolve_host

SPEC = {"host", "subsets", "trafficPolicy"}
POLICY = {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings"}
LB = {"simple", "consistentHash"}
HASH = {"httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash", "minimumRingSize"}
TCP_POOL = {"maxConnections", "connectTimeout"}
HTTP_POOL = {"http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
             "idleTimeout"}
OUTLIER = {"consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveErrors", "interval",
           "baseEjectionTime", "maxEjectionPercent", "minHealthPercent"}
TLS_MODES = ("ISTIO_MUTUAL", "DISABLE")
TLS_REPORTED = ("SIMPLE", "MUTUAL")  # originating TLS to non-mesh servers: not implemented
SIMPLE = {"ROUND_ROBIN": model.LB_ROUND_ROBIN, "LEAST_REQUEST": model.LB_LEAST_REQUEST,
          "LEAST_CONN": model.LB_LEAST_REQUEST,  # deprecated alias
          "RANDOM": model.LB_RANDOM, "PASSTHROUGH": model.LB_PASSTHROUGH, "UNSPECIFIED": model.LB_LEAST_REQUEST}


@dataclass(frozen=True)
class Pool:
    limits: model.ConnectionPool
    connect_timeout: float | None


@dataclass(frozen=True)
class PolicyParts:
    load_balancer: model.LoadBalancer | None = None
    pool: Pool | None = None
    outlier: model.OutlierDetection | None = None
    tls_mode: str | None = None
    ports: Mapping[int, PolicyParts] = field(default_factory=dict)

    def over(self, base: PolicyParts) -> PolicyParts:
        """``self``'s parts where set, ``base``'s otherwise (port levels are not carried)."""
        return PolicyParts(
            self.load_balancer or base.load_balancer, self.pool or base.pool,
            self.outlier or base.outlier, self.tls_mode or base.tls_mode,
        )


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    policy: PolicyParts = field(default_factory=PolicyParts)


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    subsets: tuple[Subset, ...]
    policy: PolicyParts = field(default_factory=PolicyParts)

    def effective(self, port: int, subset: str | None = None) -> PolicyParts:
        parts = self.policy.ports.get(port, PolicyParts()).over(self.policy)
        for s in self.subsets:
            if s.name == subset:
                parts = s.policy.over(parts)
                parts = s.policy.ports.get(port, PolicyParts()).over(parts)
        return parts


def _opt_int(obj: Mapping[str, Any], key: str, path: str, lo: int = 1) -> int | None:
    if key not in obj:
        return None
    return v.integer(obj[key], f"{path}.{key}", lo) or None


def _load_balancer(raw: Any, path: str, notes: Notes) -> model.LoadBalancer:
    lb = v.mapping(raw, path)
    notes.extra(lb, LB, path)
    if "simple" in lb and "consistentHash" in lb:
        raise ValueError(f"{path}: set only one of simple, consistentHash")
    simple = v.string(lb.get("simple", "UNSPECIFIED"), f"{path}.simple")
    if simple not in SIMPLE:
        raise ValueError(f"{path}.simple: {simple!r} is not one of {', '.join(SIMPLE)}")
    ch = None
    if "consistentHash" in lb:
        p = f"{path}.consistentHash"
        h = v.mapping(lb["consistentHash"], p)
        notes.extra(h, HASH, p)
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName") if k in h]
        if len(keys) != 1:
            raise ValueError(f"{p}: set exactly one of httpHeaderName, httpCookie, useSourceIp, "
                             "httpQueryParameterName")
        ring = 1024
        if "ringHash" in h:
            rh = v.mapping(h["ringHash"], f"{p}.ringHash")
            notes.extra(rh, {"minimumRingSize"}, f"{p}.ringHash")
            ring = v.integer(rh.get("minimumRingSize", 1024), f"{p}.ringHash.minimumRingSize", 1, 8_388_608)
        elif "minimumRingSize" in h:
            ring = v.integer(h["minimumRingSize"], f"{p}.minimumRingSize", 1, 8_388_608)
        cookie = path_ = ttl = None
        if "httpCookie" in h:
            c = v.mapping(h["httpCookie"], f"{p}.httpCookie")
            notes.extra(c, {"name", "path", "ttl"}, f"{p}.httpCookie")
            cookie = v.string(c.get("name"), f"{p}.httpCookie.name")
            path_ = v.string(c["path"], f"{p}.httpCookie.path") if "path" in c else None
            ttl = v.duration(c["ttl"], f"{p}.httpCookie.ttl", allow_zero=True) if "ttl" in c else None
        ch = model.ConsistentHash(
            header=v.string(h["httpHeaderName"], f"{p}.httpHeaderName").lower() if "httpHeaderName" in h else None,
            cookie=cookie, cookie_path=path_, cookie_ttl=ttl,
            use_source_ip=v.boolean(h["useSourceIp"], f"{p}.useSourceIp") if "useSourceIp" in h else False,
            query_param=v.string(h["httpQueryParameterName"], f"{p}.httpQueryParameterName")
            if "httpQueryParameterName" in h else None,
            minimum_ring_size=ring,
        )
        if keys == ["useSourceIp"] and not ch.use_source_ip:
            raise ValueError(f"{p}.useSourceIp: false leaves no hash key")
    return model.LoadBalancer(SIMPLE[simple], ch)


def _pool(raw: Any, path: str, notes: Notes) -> Pool:
    cp = v.mapping(raw, path)
    notes.extra(cp, {"tcp", "http"}, path)
    tcp = v.mapping(cp.get("tcp") or {}, f"{path}.tcp")
    http = v.mapping(cp.get("http") or {}, f"{path}.http")
    notes.extra(tcp, TCP_POOL, f"{path}.tcp")
    notes.extra(http, HTTP_POOL, f"{path}.http")
    hp = f"{path}.http"
    limits = model.ConnectionPool(
        max_connections=_opt_int(tcp, "maxConnections", f"{path}.tcp", 0),
        http1_max_pending_requests=_opt_int(http, "http1MaxPendingRequests", hp, 0),
        http2_max_requests=_opt_int(http, "http2MaxRequests", hp, 0),
        max_requests_per_connection=_opt_int(http, "maxRequestsPerConnection", hp, 0),
        max_retries=_opt_int(http, "maxRetries", hp, 0),
        idle_timeout=v.duration(http["idleTimeout"], f"{hp}.idleTimeout") if "idleTimeout" in http else None,
    )
    timeout = v.duration(tcp["connectTimeout"], f"{path}.tcp.connectTimeout") if "connectTimeout" in tcp else None
    return Pool(limits, timeout)


def _outlier(raw: Any, path: str, notes: Notes) -> model.OutlierDetection:
    o = v.mapping(raw, path)
    notes.extra(o, OUTLIER, path)
    gateway = _opt_int(o, "consecutiveGatewayErrors", path, 0)
    if gateway is None and "consecutiveErrors" in o:  # deprecated: counted 502/503/504
        gateway = _opt_int(o, "consecutiveErrors", path, 0)
    five = v.integer(o.get("consecutive5xxErrors", 5), f"{path}.consecutive5xxErrors", 0) or None

    def pct(key: str, default: float) -> float:
        x = v.integer(o.get(key, int(default)), f"{path}.{key}", 0, 100)
        return float(x)

    return model.OutlierDetection(
        consecutive_5xx=five, consecutive_gateway_errors=gateway,
        interval=v.duration(o["interval"], f"{path}.interval") if "interval" in o else 10.0,
        base_ejection_time=v.duration(o["baseEjectionTime"], f"{path}.baseEjectionTime")
        if "baseEjectionTime" in o else 30.0,
        max_ejection_percent=pct("maxEjectionPercent", 10), min_health_percent=pct("minHealthPercent", 0),
    )


def _tls(raw: Any, path: str, notes: Notes) -> str | None:
    t = v.mapping(raw, path)
    notes.extra(t, {"mode"}, path)
    mode = v.string(t.get("mode", "DISABLE"), f"{path}.mode")
    if mode in TLS_REPORTED:
        notes.add(f"{path}.mode", f"{mode} is not implemented yet (TLS origination); the hop is unchanged")
        return None
    if mode not in TLS_MODES:
        raise ValueError(f"{path}.mode: {mode!r} is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL")
    return mode


def _policy(raw: Any, path: str, notes: Notes, *, port_level: bool = False) -> PolicyParts:
    p = v.mapping(raw, path)
    notes.extra(p, (POLICY - {"portLevelSettings"}) | ({"port"} if port_level else {"portLevelSettings"}), path)
    parts = PolicyParts(
        load_balancer=_load_balancer(p["loadBalancer"], f"{path}.loadBalancer", notes) if "loadBalancer" in p else None,
        pool=_pool(p["connectionPool"], f"{path}.connectionPool", notes) if "connectionPool" in p else None,
        outlier=_outlier(p["outlierDetection"], f"{path}.outlierDetection", notes) if "outlierDetection" in p
        else None,
        tls_mode=_tls(p["tls"], f"{path}.tls", notes) if "tls" in p else None,
    )
    ports: dict[int, PolicyParts] = {}
    for i, raw_port in enumerate(v.listing(p.get("portLevelSettings") or [], f"{path}.portLevelSettings")):
        pp = f"{path}.portLevelSettings[{i}]"
        level = v.mapping(raw_port, pp)
        number = v.port(v.mapping(level.get("port"), f"{pp}.port").get("number"), f"{pp}.port.number")
        ports[number] = _policy(level, pp, notes, port_level=True)
    return dataclasses.replace(parts, ports=ports)


def parse_destination_rule(obj: Mapping[str, Any]) -> tuple[DestinationRule, list[str]]:
    meta, ns, notes, spec = v.open_resource("DestinationRule", obj, SPEC)
    host = resolve_host(v.string(spec.get("host"), "spec.host"), ns)
    policy = _policy(spec["trafficPolicy"], "spec.trafficPolicy", notes) if "trafficPolicy" in spec else PolicyParts()
    subsets = []
    seen = set()
    for i, raw in enumerate(v.listing(spec.get("subsets") or [], "spec.subsets")):
        path = f"spec.subsets[{i}]"
        s = v.mapping(raw, path)
        notes.extra(s, {"name", "labels", "trafficPolicy"}, path)
        name = v.string(s.get("name"), f"{path}.name")
        if name in seen:
            raise ValueError(f"{path}.name: duplicate subset {name!r}")
        seen.add(name)
        sub_policy = _policy(s["trafficPolicy"], f"{path}.trafficPolicy", notes) if "trafficPolicy" in s \
            else PolicyParts()
        subsets.append(Subset(name, v.string_map(s.get("labels") or {}, f"{path}.labels"), sub_policy))
    return DestinationRule(meta["name"], ns, host, tuple(subsets), policy), notes.items
