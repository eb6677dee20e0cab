"""Header operations (VirtualService ``headers``): remove, then set, then add, as Envoy applies them.

Destination-level operations run first and route-level ones after (Envoy's default order, so a
route-level ``set`` wins). Headers are (name, value) pairs with lower-case names.
"""

from __future__ import annotations

from control_plane.api.model import HeaderOps, HeaderPolicy

Headers = list[tuple[str, str]]


def apply(headers: Headers, ops: HeaderOps | None) -> Headers:
    if ops is None:
        return headers
    drop = set(ops.remove) | set(ops.set)
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    out.extend(ops.set.items())
    out.extend(ops.add.items())
    return out


def request(headers: Headers, destination: HeaderPolicy | None, route: HeaderPolicy | None) -> Headers:
    for level in (destination, route):
        if level is not None:
            headers = apply(headers, level.request)
    return headers


def response(headers: Headers, destination: HeaderPolicy | None, route: HeaderPolicy | None) -> Headers:
    for level in (destination, route):
        if level is not None:
            headers = apply(headers, level.response)
    return headers
