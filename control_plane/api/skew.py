"""Version skew of the discovery stream: what a proxy one minor version older can decode.

Proxies from 0.2 on skip snapshot fields they do not know (``ProxyConfig.from_dict(data,
ignored)``) and report them once in their ACK. Proxies of 0.1 decode strictly: an unknown field
would make them NACK every snapshot. So for a proxy older than the control plane, the server
prunes each snapshot to the shape that proxy's release knows (recorded here, per release) before
sending it. Standard library only: the proxy imports this module too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Mapping
from typing import Any

from control_plane.api import version as versions

# A shape: for an object, {field: shape of its value}; None for a leaf (str, int, ...).
# Lists and mapping values take the shape of their elements.
Shape = dict[str, Any] | None

# The snapshot shape of every release that decodes strictly, by (major, minor): recorded from
# that release's model (``python -m control_plane.api.skew`` prints the current one). A field
# may be added in a later release; one that is listed here may never be removed or renamed.
STRICT_RELEASES: dict[tuple[int, int], Shape] = {
    (0, 1): {
        "version": None,
        "outbound": {"service": None, "addresses": None, "port": None, "protocol": None,
                     "default_cluster": None,
                     "routes": {"name": None, "timeout": None,
                                "destinations": {"cluster": None, "weight": None},
                                "matches": {"path_exact": None, "path_prefix": None,
                                            "method": None, "headers": None},
                                "retries": {"attempts": None, "per_try_timeout": None,
                                            "retry_on": None}}},
        "clusters": {"name": None, "service": None, "port": None, "protocol": None,
                     "connect_timeout": None,
                     "endpoints": {"address": None, "port": None, "identity": None,
                                   "labels": None, "weight": None}},
        "inbound": {"mtls_mode": None, "port_mtls": None},
        "opaque_ports": None,
        "trust_bundle": None,
        "unsupported": None,
    },
}


# Fields of a recorded release that the current model no longer has, which ``downgrade``
# computes for that release from what replaced them.
DOWNGRADED: dict[tuple[int, int], frozenset[str]] = {
    (0, 1): frozenset({"config.outbound.routes.matches.path_exact",
                       "config.outbound.routes.matches.path_prefix"}),
}


def shape_of(tp: Any) -> Shape:
    """The shape of a model type (dataclasses, tuples, mappings, optionals, leaves)."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: shape_of(hints[f.name]) for f in dataclasses.fields(tp)}
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return shape_of(args[0])
    if origin in (Mapping, dict, typing.Mapping):
        return shape_of(args[1])
    if len(args) == 1:  # X | None
        return shape_of(args[0])
    return None


def strict_shape_for(proxy_version: str) -> Shape:
    """The shape to prune to for a proxy of ``proxy_version``; None: send everything."""
    release = versions.minor(proxy_version)
    return STRICT_RELEASES.get(release) if release else None


def prune(value: Any, shape: Shape, path: str = "config", dropped: list[str] | None = None) -> Any:
    """``value`` without the object fields ``shape`` lacks; their paths go into ``dropped``."""
    if shape is None:
        return value
    if isinstance(value, list):
        return [prune(v, shape, f"{path}[*]", dropped) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k in shape:
            out[k] = prune(v, shape[k], f"{path}.{k}", dropped)
        elif dropped is not None:
            dropped.append(f"{path}.{k}")
    return out


def downgrade(body: dict[str, Any], proxy_version: str, dropped: list[str]) -> dict[str, Any]:
    """A snapshot in the vocabulary of an older release, before ``prune`` trims its shape.

    0.1 matched routes on ``path_exact``/``path_prefix``, an exact ``method`` and exact header
    values. A match that says only that much is rewritten to those fields; a route with any
    match that 0.1 cannot express is left out of that proxy's snapshot (pruning its fields
    would turn it into a match-all and take traffic that is not its own). Left-out routes are
    appended to ``dropped`` like pruned fields.
    """
    if versions.minor(proxy_version) != (0, 1):
        return body
    for i, port in enumerate(body.get("outbound") or []):
        kept = []
        for j, route in enumerate(port.get("routes") or []):
            matches = [_match_0_1(m) for m in route.get("matches") or []]
            if any(m is None for m in matches) or _needs_newer(route):
                dropped.append(f"config.outbound[{i}].routes[{j}] (needs a newer proxy)")
                continue
            kept.append({**route, "matches": matches})
        if "routes" in port:
            port["routes"] = kept
    return body


def _needs_newer(route: dict[str, Any]) -> bool:
    """Redirects and direct responses have no destinations; 0.1 would route them anywhere."""
    return not route.get("destinations")


def _exact(sm: Any) -> str | None:
    if not isinstance(sm, dict) or set(k for k, v in sm.items() if v is not None) != {"exact"}:
        return None
    return str(sm["exact"])


def _match_0_1(m: dict[str, Any]) -> dict[str, Any] | None:
    """One match in 0.1's terms, or None when it uses anything 0.1 cannot evaluate."""
    newer = ("scheme", "authority", "without_headers", "query_params", "port", "source_labels",
             "source_namespace")
    if any(m.get(k) for k in newer) or m.get("ignore_uri_case"):
        return None
    out: dict[str, Any] = {"path_exact": None, "path_prefix": None, "method": None, "headers": {}}
    uri = m.get("uri")
    if uri:
        if uri.get("exact") is not None and not uri.get("prefix") and not uri.get("regex"):
            out["path_exact"] = uri["exact"]
        elif uri.get("prefix") is not None and not uri.get("exact") and not uri.get("regex"):
            out["path_prefix"] = uri["prefix"]
        else:
            return None
    if m.get("method"):
        method = _exact(m["method"])
        if method is None:
            return None
        out["method"] = method
    for name, sm in (m.get("headers") or {}).items():
        value = _exact(sm)
        if value is None:
            return None
        out["headers"][name] = value
    return out


_INDEX = re.compile(r"\[[^\]]*\]")


def field_path(path: str) -> str:
    """``config.clusters[3].x`` → ``config.clusters[*].x``: one name per field, not per element."""
    return _INDEX.sub("[*]", path)


if __name__ == "__main__":
    from control_plane.api.model import ProxyConfig

    print(json.dumps(shape_of(ProxyConfig), indent=2, sort_keys=True))
