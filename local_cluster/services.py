"""Services: VIPs from 198.19.0.0/16, per-pod hosts entries, and the node's kube-proxy rules.

Meshed pods never use the node's rules (their proxy connects to pod IPs); unmeshed clients
and direct baselines reach a VIP through DNAT in the node namespace. Pods share one bridge and
br_netfilter is not available, so DNATed connections are also masqueraded: otherwise the
endpoint would answer the client directly over the bridge and the client would drop the reply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from local_cluster import config
from local_cluster.netns import SERVICE_CIDR

FIRST_HOST = 10  # 198.19.0.1-9 stay free, as a cluster keeps its first service IPs
CHAIN = "REMORA-SERVICES"


class VipError(ValueError):
    pass


class VipAllocator:
    """Hands out service VIPs; a Service may ask for a specific spec.clusterIP."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], str] = {}

    def allocate(self, namespace: str, name: str, requested: str | None = None) -> str:
        key = (namespace, name)
        taken = {ip: k for k, ip in self.by_key.items()}
        if requested and requested != "None":
            addr = ipaddress.ip_address(requested)
            if addr not in SERVICE_CIDR:
                raise VipError(f"Service {namespace}/{name}: spec.clusterIP {requested} is outside "
                               f"the service range {SERVICE_CIDR}; remove it or pick one inside")
            if taken.get(requested, key) != key:
                other = "/".join(taken[requested])
                raise VipError(f"Service {namespace}/{name}: spec.clusterIP {requested} is "
                               f"already used by {other}")
            self.by_key[key] = requested
            return requested
        if key in self.by_key:
            return self.by_key[key]
        for host in range(FIRST_HOST, SERVICE_CIDR.num_addresses - 1):
            ip = str(SERVICE_CIDR.network_address + host)
            if ip not in taken:
                self.by_key[key] = ip
                return ip
        raise VipError(f"no free VIP left in {SERVICE_CIDR}")

    def release(self, namespace: str, name: str) -> None:
        self.by_key.pop((namespace, name), None)


def host_entries(services: Iterable[dict[str, Any]], pod_namespace: str) -> dict[str, str]:
    """name -> VIP as a pod in ``pod_namespace`` resolves them (short names: own namespace)."""
    out: dict[str, str] = {}
    for svc in services:
        vip = (svc.get("spec") or {}).get("clusterIP")
        if not vip or vip == "None":
            continue
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        out[f"{name}.{ns}.svc.{config.CLUSTER_DOMAIN}"] = vip
        out[f"{name}.{ns}.svc"] = vip
        out[f"{name}.{ns}"] = vip
        if ns == pod_namespace:
            out[name] = vip
    return out


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int


def dnat_rules(backends: Mapping[tuple[str, int], list[Endpoint]]) -> str:
    """``iptables-restore`` input for the node's nat table: VIP:port -> ready endpoints.

    Endpoints are picked at random with kube-proxy's statistic ladder (1/n, 1/(n-1), ..., 1).
    """
    lines = [
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", f":{CHAIN} - [0:0]",
        f"-A PREROUTING -j {CHAIN}", f"-A OUTPUT -j {CHAIN}",
        "-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE",
    ]
    for (vip, port), eps in sorted(backends.items()):
        match = f"-A {CHAIN} -d {vip}/32 -p tcp -m tcp --dport {port}"
        for i, ep in enumerate(eps):
            left = len(eps) - i
            stat = f" -m statistic --mode random --probability {1 / left:.5f}" if left > 1 else ""
            lines.append(f"{match}{stat} -j DNAT --to-destination {ep.ip}:{ep.port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
