"""Cluster DNS of the local cluster: each pod's resolv.conf, and a resolver on the node.

As a Kubernetes cluster's DNS does: a pod's resolv.conf lists the search domains
``<ns>.svc.cluster.local svc.cluster.local cluster.local`` (``ndots:5``) and one nameserver,
here the node's bridge address, where ``python -m local_cluster.nodedns`` answers
``<svc>.<ns>.svc.cluster.local`` (A, and SRV ``_<port-name>._tcp.<svc>...``) from the Service
objects the cluster exports for the control plane. Every other name is NXDOMAIN at once: the
node has no upstream, and an answer now beats a time-out. Unmeshed pods use it directly;
a meshed pod's proxy answers mesh names itself and forwards the rest here (docs/dns.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from local_cluster import config, netns
from sidecar import dns, dnswire
from sidecar.dnstable import Entry, NameTable

log = logging.getLogger("remora.nodedns")
PORT = 53


def resolv_conf(namespace: str) -> str:
    d = config.CLUSTER_DOMAIN
    return (f"# written by the Remora local cluster (local_cluster/nodedns.py)\n"
            f"search {namespace}.svc.{d} svc.{d} {d}\n"
            f"nameserver {netns.GATEWAY}\noptions ndots:5\n")


def write_resolv_conf(pod_netns: str, namespace: str) -> Path:
    """/etc/netns/<pod>/resolv.conf: ``ip netns exec`` mounts it over the pod's /etc/resolv.conf,
    so it must exist before the pod's first process starts."""
    d = netns.NETNS_ETC / pod_netns
    d.mkdir(parents=True, exist_ok=True)
    path = d / "resolv.conf"
    path.write_text(resolv_conf(namespace))
    return path


def table_from_services(services: list[dict[str, Any]]) -> NameTable:
    names: dict[str, Entry] = {}
    for svc in services:
        spec, meta = svc.get("spec") or {}, svc.get("metadata") or {}
        ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
        if not ips or not meta.get("name") or not meta.get("namespace"):
            continue
        host = f"{meta['name']}.{meta['namespace']}.svc.{config.CLUSTER_DOMAIN}"
        ports = tuple((str(p.get("name") or p.get("port")), int(p["port"]))
                      for p in spec.get("ports") or [] if "port" in p)
        names[host] = Entry(host, tuple(ips), ports)
    return NameTable(names)


class ServiceWatch:
    """The table of the Service files in the exported objects directory, re-read on change."""

    def __init__(self, objects: Path) -> None:
        self.objects = objects
        self._seen: tuple[tuple[str, int], ...] = ()
        self.table = NameTable()

    def __call__(self) -> NameTable:
        files = sorted(self.objects.glob("service.*.yaml"))
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in files if f.exists())
        if stamp != self._seen:
            docs = []
            for f in files:
                try:
                    docs.append(yaml.safe_load(f.read_text()) or {})
                except (OSError, yaml.YAMLError):
                    continue  # being replaced; the next query re-reads it
            self.table, self._seen = table_from_services(docs), stamp
        return self.table


def command(objects: Path) -> list[str]:
    """How the daemon runs this resolver (in the node's namespace, as root: port 53)."""
    return [str(config.BIN_DIR / "python"), "-m", "local_cluster.nodedns", "--objects", str(objects)]


async def serve(objects: Path, bind: str, port: int) -> None:
    proxy = dns.DnsProxy(ServiceWatch(objects), (), unknown=dnswire.NXDOMAIN)
    await proxy.start(bind, port)
    log.info("cluster DNS on %s:%d for %s", bind, port, objects)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local_cluster.nodedns")
    p.add_argument("--objects", required=True, help="directory of exported Service YAML files")
    p.add_argument("--bind", default=str(netns.GATEWAY))
    p.add_argument("--port", type=int, default=PORT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(Path(args.objects), args.bind, args.port))
    except OSError as e:
        print(f"local cluster DNS: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
