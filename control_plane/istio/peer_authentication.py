"""PeerAuthentication (security.istio.io v1/v1beta1) → typed record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api import model
from control_plane.istio import values as v

PA_SPEC = {"selector", "mtls", "portLevelMtls"}


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str
    selector: Mapping[str, str] | None
    mode: str | None  # None: UNSET, inherit from the parent level
    port_modes: Mapping[int, str]


def _mode(raw: Any, path: str) -> str | None:
    mode = (v.mapping(raw, path).get("mode") or "UNSET")
    if mode == "UNSET":
        return None
    if mode not in model.MTLS_MODES:
        raise ValueError(f"{path}.mode: {mode!r} is not one of UNSET, {', '.join(model.MTLS_MODES)}")
    return mode


def parse_peer_authentication(obj: Mapping[str, Any]) -> tuple[PeerAuthentication, list[str]]:
    meta, ns, notes, spec = v.open_resource("PeerAuthentication", obj, PA_SPEC)
    selector = None
    if spec.get("selector"):
        sel = v.mapping(spec["selector"], "spec.selector")
        notes.extra(sel, {"matchLabels"}, "spec.selector")
        selector = {str(k): str(v) for k, v in (sel.get("matchLabels") or {}).items()}
    mode = _mode(spec["mtls"], "spec.mtls") if "mtls" in spec else None
    ports: dict[int, str] = {}
    for port, raw in v.mapping(spec.get("portLevelMtls") or {}, "spec.portLevelMtls").items():
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
