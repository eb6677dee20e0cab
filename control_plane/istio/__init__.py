"""Istio-shaped resources → typed records, validated with field paths.

One module per kind; ``values`` holds the readers every kind shares (durations, StringMatch,
percentages, notes). A parser returns the record and the list of fields present that Remora
does not implement; an invalid resource raises ValueError naming the field path.
"""

from control_plane.istio.destination_rule import (
    DestinationRule,
    PolicyParts,
    Subset,
    parse_destination_rule,
)
from control_plane.istio.peer_authentication import PeerAuthentication, parse_peer_authentication
from control_plane.istio.service_entry import ServiceEntry, parse_service_entry
from control_plane.istio.sidecar_scope import Sidecar, parse_sidecar
from control_plane.istio.values import duration
from control_plane.istio.virtual_service import (
    RouteDestination,
    VirtualService,
    VsRoute,
    VsTcpRoute,
    parse_virtual_service,
)

# Istio kinds Remora reads but does not implement: each resource is reported by name.
REPORTED_KINDS = (
    "Gateway", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup", "RequestAuthentication", "Telemetry",
    "WasmPlugin", "ProxyConfig",
)

__all__ = [
    "REPORTED_KINDS", "DestinationRule", "PeerAuthentication", "PolicyParts", "RouteDestination",
    "ServiceEntry", "Sidecar", "Subset", "VirtualService", "VsRoute", "VsTcpRoute", "duration",
    "parse_destination_rule", "parse_peer_authentication", "parse_service_entry", "parse_sidecar",
    "parse_virtual_service",
]
