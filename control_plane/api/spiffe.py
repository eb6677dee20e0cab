"""SPIFFE ID strings: build, parse, and read them from a peer certificate.

Standard library only: the proxy imports this on its hot path and must stay small in memory.
"""

from __future__ import annotations

import re
from typing import Any

from control_plane.api.ports import DEFAULT_TRUST_DOMAIN

_SPIFFE = re.compile(r"^spiffe://(?P<td>[a-z0-9._-]+)/ns/(?P<ns>[a-z0-9-]+)/sa/(?P<sa>[a-z0-9.-]+)$")


def spiffe_id(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(uri: str) -> tuple[str, str, str]:
    """(trust_domain, namespace, service_account); ValueError when ``uri`` is not one."""
    m = _SPIFFE.match(uri)
    if not m:
        raise ValueError(f"{uri!r} is not a workload SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>)")
    return m["td"], m["ns"], m["sa"]


def spiffe_ids_of_peercert(peercert: dict[str, Any] | None) -> list[str]:
    """SPIFFE URIs from ``ssl.SSLSocket.getpeercert()`` (cheap: no certificate parsing)."""
    if not peercert:
        return []
    return [v for k, v in peercert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")]
