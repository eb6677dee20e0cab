"""ServiceEntry → typed record: services the registry adds next to the Kubernetes ones."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.istio import values as v
from control_plane.protocols import port_protocol

SPEC = {"hosts", "addresses", "ports", "location", "resolution", "endpoints"}
ENDPOINT = {"address", "ports", "labels", "weight", "serviceAccount"}
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")


@dataclass(frozen=True)
class SePort:
    name: str
    number: int
    protocol: str  # model protocol
    target_port: int | None


@dataclass(frozen=True)
class SeEndpoint:
    address: str  # an IP (STATIC) or a hostname (DNS)
    ports: Mapping[str, int]
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    service_account: str | None = None


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    addresses: tuple[str, ...]
    ports: tuple[SePort, ...]
    location: str
    resolution: str
    endpoints: tuple[SeEndpoint, ...]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_service_entry(obj: Mapping[str, Any]) -> tuple[ServiceEntry, list[str]]:
    meta, ns, notes, spec = v.open_resource("ServiceEntry", obj, SPEC)
    hosts = tuple(v.string(h, f"spec.hosts[{i}]").lower() for i, h in enumerate(v.listing(spec.get("hosts") or [],
                                                                                          "spec.hosts")))
    if not hosts:
        raise ValueError("spec.hosts: at least one host is needed")
    addresses = []
    for i, a in enumerate(v.listing(spec.get("addresses") or [], "spec.addresses")):
        text = v.string(a, f"spec.addresses[{i}]")
        if not _is_ip(text):
            notes.add(f"spec.addresses[{i}]", f"{text!r} is a CIDR or not an IP; only single addresses are "
                      "captured, ignored")
            continue
        addresses.append(text)
    ports = []
    for i, raw in enumerate(v.listing(spec.get("ports") or [], "spec.ports")):
        path = f"spec.ports[{i}]"
        p = v.mapping(raw, path)
        notes.extra(p, {"number", "protocol", "name", "targetPort"}, path)
        name = v.string(p.get("name", ""), f"{path}.name", empty=True)
        protocol = v.string(p.get("protocol", "TCP"), f"{path}.protocol")
        ports.append(SePort(name, v.port(p.get("number"), f"{path}.number"),
                            port_protocol(protocol, None),
                            v.port(p["targetPort"], f"{path}.targetPort") if "targetPort" in p else None))
    if not ports:
        raise ValueError("spec.ports: at least one port is needed")
    location = v.string(spec.get("location", "MESH_EXTERNAL"), "spec.location")
    if location not in LOCATIONS:
        raise ValueError(f"spec.location: {location!r} is not one of {', '.join(LOCATIONS)}")
    resolution = v.string(spec.get("resolution", "NONE"), "spec.resolution")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"spec.resolution: {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    if resolution == "DNS_ROUND_ROBIN":
        notes.add("spec.resolution", "DNS_ROUND_ROBIN is treated as DNS")
        resolution = "DNS"
    endpoints = []
    for i, raw in enumerate(v.listing(spec.get("endpoints") or [], "spec.endpoints")):
        path = f"spec.endpoints[{i}]"
        e = v.mapping(raw, path)
        notes.extra(e, ENDPOINT, path)
        address = v.string(e.get("address"), f"{path}.address")
        if resolution == "STATIC" and not _is_ip(address):
            raise ValueError(f"{path}.address: {address!r} is not an IP address (resolution STATIC)")
        endpoints.append(SeEndpoint(
            address,
            {str(k): v.port(x, f"{path}.ports.{k}") for k, x in v.mapping(e.get("ports") or {}, f"{path}.ports").items()},
            v.string_map(e.get("labels") or {}, f"{path}.labels"),
            v.integer(e.get("weight", 1), f"{path}.weight", 0),
            v.string(e["serviceAccount"], f"{path}.serviceAccount") if "serviceAccount" in e else None,
        ))
    if resolution == "STATIC" and not endpoints:
        raise ValueError("spec.endpoints: resolution STATIC needs at least one endpoint")
    if resolution == "NONE" and endpoints:
        raise ValueError("spec.endpoints: resolution NONE takes no endpoints")
    if not addresses:
        notes.add("spec.addresses", "is empty: Remora captures a service by address, so only apps that "
                  "connect to the hosts' own addresses reach it (passthrough, no routing)")
    return ServiceEntry(meta["name"], ns, hosts, tuple(addresses), tuple(ports), location, resolution,
                        tuple(endpoints)), notes.items
