"""Sidecar (egress hosts) → typed record: which services a workload's proxy is given.

Hosts are "namespace/dnsName" as in Istio: "*/*" everything, "./*" the Sidecar's own
namespace, "~/*" nothing, "ns/*" one namespace, "*/reviews.ns.svc.cluster.local" one host
anywhere, and "*.example.com" style wildcards in the name part.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.istio import values as v

SPEC = {"workloadSelector", "egress"}
EGRESS = {"hosts"}


@dataclass(frozen=True)
class Sidecar:
    name: str
    namespace: str
    selector: Mapping[str, str] | None  # None: every workload of the namespace
    hosts: tuple[tuple[str, str], ...]  # (namespace pattern, host pattern)

    def allows(self, service_namespace: str, host: str) -> bool:
        for ns, pattern in self.hosts:
            if ns == "~":
                continue
            ns_ok = ns == "*" or (ns == "." and service_namespace == self.namespace) or ns == service_namespace
            if ns_ok and fnmatch.fnmatchcase(host, pattern):
                return True
        return False


def parse_sidecar(obj: Mapping[str, Any]) -> tuple[Sidecar, list[str]]:
    meta, ns, notes, spec = v.open_resource("Sidecar", obj, SPEC)
    selector = None
    if "workloadSelector" in spec:
        ws = v.mapping(spec["workloadSelector"], "spec.workloadSelector")
        notes.extra(ws, {"labels"}, "spec.workloadSelector")
        selector = v.string_map(ws.get("labels") or {}, "spec.workloadSelector.labels")
    hosts: list[tuple[str, str]] = []
    egress = v.listing(spec.get("egress") or [], "spec.egress")
    for i, raw in enumerate(egress):
        path = f"spec.egress[{i}]"
        e = v.mapping(raw, path)
        notes.extra(e, EGRESS, path)
        for j, h in enumerate(v.listing(e.get("hosts"), f"{path}.hosts")):
            text = v.string(h, f"{path}.hosts[{j}]")
            if text.count("/") != 1 or not all(text.split("/")):
                raise ValueError(f"{path}.hosts[{j}]: {text!r} is not namespace/host (e.g. ./* or istio-system/*)")
            hns, host = text.split("/")
            hosts.append((hns, host.lower()))
    if not egress:
        hosts.append(("*", "*"))  # no egress section: Istio gives the workload everything
    return Sidecar(meta["name"], ns, selector, tuple(hosts)), notes.items
