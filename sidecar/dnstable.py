"""Which names the DNS proxy answers itself, built from the proxy's configuration. Pure.

As Istio's DNS proxy does: a Kubernetes service ``<svc>.<ns>.svc.<domain>`` is known under
that name, ``<svc>.<ns>.svc``, ``<svc>.<ns>`` and, in the pod's own namespace, ``<svc>``; a
ServiceEntry host with addresses is known under its own name. A stub resolver appends the
pod's search domains (``<ns>.svc.cluster.local svc.cluster.local cluster.local``) itself, so
a short name reaches the proxy as one of these. SRV: ``_<protocol>._tcp.<name>`` (the port's
protocol as Istio's port-name prefix: http, grpc, tcp...) gives the service's ports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from control_plane.api.model import ProxyConfig

from . import dnswire

TTL = 30  # seconds; short, as a VIP may move when a Service is recreated


@dataclass(frozen=True, slots=True)
class Entry:
    host: str  # the service's full hostname (SRV targets point at it)
    addresses: tuple[str, ...]
    ports: tuple[tuple[str, int], ...] = ()  # (protocol, port)


@dataclass(frozen=True)
class NameTable:
    names: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def build(cls, config: ProxyConfig | None, namespace: str) -> NameTable:
        names: dict[str, Entry] = {}
        by_host: dict[str, tuple[set[str], set[tuple[str, int]]]] = {}
        for out in (config.outbound if config else ()):
            if not out.addresses or out.service.startswith("*"):
                continue  # nothing to answer with; the name is forwarded
            addrs, ports = by_host.setdefault(out.service.lower().rstrip("."), (set(), set()))
            addrs.update(out.addresses)
            ports.add((out.protocol.lower(), out.port))
        for host, (addrs, ports) in sorted(by_host.items()):
            entry = Entry(host, tuple(sorted(addrs)), tuple(sorted(ports)))
            for alias in aliases(host, namespace):
                names.setdefault(alias, entry)
        return cls(names)

    def lookup(self, name: str) -> Entry | None:
        return self.names.get(name)

    def answer(self, q: dnswire.Question) -> tuple[int, tuple[dnswire.Record, ...]] | None:
        """(rcode, records) for a name the table knows; None: not ours, forward it."""
        if q.qclass != dnswire.IN:
            return None
        if q.qtype == dnswire.SRV:
            return self._srv(q.name)
        entry = self.names.get(q.name)
        if entry is None:
            return None
        if q.qtype in (dnswire.A, dnswire.AAAA):
            want = 4 if q.qtype == dnswire.A else 6
            return dnswire.NOERROR, tuple(
                r for r in (dnswire.a_record(a, TTL) for a in entry.addresses)
                if (r.rtype == dnswire.A) == (want == 4))
        # The name exists but has no record of this type: an empty answer (NODATA), not an
        # error, so getaddrinfo still uses the A answer.
        return dnswire.NOERROR, ()

    def _srv(self, name: str) -> tuple[int, tuple[dnswire.Record, ...]] | None:
        parts = name.split(".", 2)
        if len(parts) < 3 or not parts[0].startswith("_") or parts[1] != "_tcp":
            return None
        entry = self.names.get(parts[2])
        if entry is None:
            return None
        proto = parts[0][1:]
        return dnswire.NOERROR, tuple(dnswire.srv_record(0, 100, port, entry.host, TTL)
                                      for p, port in entry.ports if p == proto)


def aliases(host: str, namespace: str) -> Iterable[str]:
    """The names a pod in ``namespace`` may use for ``host`` (see the module docstring)."""
    yield host
    labels = host.split(".")
    if len(labels) >= 4 and labels[2] == "svc":
        svc, ns = labels[0], labels[1]
        yield f"{svc}.{ns}.svc"
        yield f"{svc}.{ns}"
        if ns == namespace:
            yield svc
