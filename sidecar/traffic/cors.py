"""CORS (VirtualService ``corsPolicy``) as Envoy's CORS filter applies it.

``preflight`` answers an OPTIONS request that carries Origin and
Access-Control-Request-Method: an allowed origin gets 200 with the allow-* headers and is not
forwarded; an origin that is not allowed is forwarded upstream (unmatchedPreflights FORWARD,
Istio's default) or answered 200 without CORS headers (IGNORE). ``response_headers`` adds
allow-origin, allow-credentials and expose-headers to the answer of an allowed actual request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.api.model import CorsPolicy
from sidecar.traffic.match import string_matches

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Preflight:
    respond: bool  # True: answer locally with 200 and ``headers``; False: forward upstream
    headers: tuple[tuple[str, str], ...] = ()


FORWARD = Preflight(False)


def _get(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    return any(m.exact == "*" or string_matches(m, origin) for m in policy.allow_origins)


def is_preflight(method: str, headers: Sequence[tuple[str, str]]) -> bool:
    return (method == "OPTIONS" and _get(headers, "origin") is not None
            and _get(headers, "access-control-request-method") is not None)


def preflight(policy: CorsPolicy, headers: Sequence[tuple[str, str]]) -> Preflight:
    origin = _get(headers, "origin") or ""
    if not origin_allowed(policy, origin):
        return FORWARD if policy.unmatched_preflights_forward else Preflight(True)
    out = [("access-control-allow-origin", origin)]
    if policy.allow_credentials:
        out.append(("access-control-allow-credentials", "true"))
    if policy.allow_methods:
        out.append(("access-control-allow-methods", ",".join(policy.allow_methods)))
    if policy.allow_headers:
        out.append(("access-control-allow-headers", ",".join(policy.allow_headers)))
    if policy.max_age is not None:
        out.append(("access-control-max-age", str(int(policy.max_age))))
    return Preflight(True, tuple(out))


def response_headers(policy: CorsPolicy, request_headers: Sequence[tuple[str, str]]) -> Headers:
    """Headers to add to the upstream's answer of a non-preflight request (none if not CORS)."""
    origin = _get(request_headers, "origin")
    if origin is None or not origin_allowed(policy, origin):
        return []
    out = [("access-control-allow-origin", origin)]
    if policy.allow_credentials:
        out.append(("access-control-allow-credentials", "true"))
    if policy.expose_headers:
        out.append(("access-control-expose-headers", ",".join(policy.expose_headers)))
    return out
