"""The rule planner: configuration + address family → the ordered nat rules, pure.

A plan renders to exactly the lines ``iptables-legacy-save -t nat`` prints for those rules once
they are in place, in the same order (built-in chains first, then our chains sorted by name),
so ``--dry-run`` shows what will be there and ``--verify`` can compare text with text.
Why each rule exists is written up in docs/init-container.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from control_plane.api.netparse import ALL
from control_plane.api.ports import (
    AGENT_PORT,
    HEALTH_PORT,
    INBOUND_PASSTHROUGH_SOURCE,
    METRICS_PORT,
)

from .config import InitConfig

Family = Literal[4, 6]

TABLE = "nat"
PREFIX = "REMORA_"
INBOUND = "REMORA_INBOUND"  # from PREROUTING: which inbound ports to capture
IN_REDIRECT = "REMORA_IN_REDIRECT"  # -> the inbound proxy port
OUTPUT = "REMORA_OUTPUT"  # from OUTPUT: which outbound traffic to capture
REDIRECT = "REMORA_REDIRECT"  # -> the outbound proxy port
DNS = "REMORA_DNS"  # from OUTPUT, port 53 over UDP and TCP: -> the proxy's DNS port
DNS_PORT = 53
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")  # iptables-save's order

# The proxy's own listeners that peers reach directly: probes, readiness, scraping.
ALWAYS_EXCLUDED_INBOUND = (AGENT_PORT, HEALTH_PORT, METRICS_PORT)

LOCALHOST = {4: "127.0.0.1/32", 6: "::1/128"}
# The inbound proxy connects to the app from this source; its IPv6 twin is ::6 as in Istio.
PASSTHROUGH = {4: f"{INBOUND_PASSTHROUGH_SOURCE}/32", 6: "::6/128"}


@dataclass(frozen=True)
class Owner:
    kind: Literal["uid", "gid"]
    id: int
    negated: bool = False


@dataclass(frozen=True)
class Rule:
    """One rule, limited to the matches Remora uses."""

    chain: str
    target: str  # a chain name, RETURN or REDIRECT
    src: str | None = None
    dst: str | None = None
    not_dst: bool = False
    out_iface: str | None = None
    tcp: bool = False
    udp: bool = False
    dport: int | None = None
    owner: Owner | None = None
    to_port: int | None = None  # REDIRECT --to-ports

    def render(self) -> str:
        """The rule as iptables-save prints it (its option order)."""
        parts = ["-A", self.chain]
        if self.src:
            parts += ["-s", self.src]
        if self.dst:
            parts += ["!", "-d", self.dst] if self.not_dst else ["-d", self.dst]
        if self.out_iface:
            parts += ["-o", self.out_iface]
        proto = "tcp" if self.tcp else "udp" if self.udp else None
        if proto:
            parts += ["-p", proto]
        if self.dport is not None:
            parts += ["-m", proto or "tcp", "--dport", str(self.dport)]
        if self.owner:
            parts += ["-m", "owner"] + (["!"] if self.owner.negated else [])
            parts += [f"--{self.owner.kind}-owner", str(self.owner.id)]
        parts += ["-j", self.target]
        if self.to_port is not None:
            parts += ["--to-ports", str(self.to_port)]
        return " ".join(parts)


@dataclass(frozen=True)
class Plan:
    """Our chains and every rule we own (jumps from built-in chains included), in save order."""

    family: Family
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    @classmethod
    def empty(cls, family: Family) -> Plan:
        """The plan of ``--cleanup``: nothing of ours."""
        return cls(family=family, chains=(), rules=())

    def rules_of(self, chain: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.chain == chain)

    def lines(self) -> list[str]:
        """Chain declarations and rules, as iptables-save prints them."""
        return [f":{c} - [0:0]" for c in self.chains] + [r.render() for r in self.rules]

    def render(self) -> str:
        """iptables-save text of the nat table (restorable with iptables-legacy-restore -n)."""
        return "\n".join([f"*{TABLE}", *self.lines(), "COMMIT"]) + "\n"


def build_plan(config: InitConfig, family: Family) -> Plan:
    """The ordered rules for one address family."""
    inbound = config.include_inbound_ports != ()
    rules = []
    if inbound:
        rules.append(Rule("PREROUTING", INBOUND, tcp=True))
    if config.dns_capture:  # before REMORA_OUTPUT, which would send TCP 53 to the outbound port
        rules += _dns(config)
    rules.append(Rule("OUTPUT", OUTPUT, tcp=True))
    if inbound:
        rules += _inbound(config)
    rules += _output(config, family, inbound)
    rules.append(Rule(REDIRECT, "REDIRECT", tcp=True, to_port=config.outbound_port))
    return _ordered(family, rules)


def _dns(c: InitConfig) -> list[Rule]:
    """The app's DNS queries, over UDP and TCP, to the proxy; the proxy's own go out."""
    return [
        Rule("OUTPUT", DNS, udp=True, dport=DNS_PORT),
        Rule("OUTPUT", DNS, tcp=True, dport=DNS_PORT),
        Rule(DNS, "RETURN", owner=Owner("uid", c.proxy_uid)),
        Rule(DNS, "RETURN", owner=Owner("gid", c.proxy_gid)),
        Rule(DNS, "REDIRECT", udp=True, to_port=c.dns_port),
        Rule(DNS, "REDIRECT", tcp=True, to_port=c.dns_port),
    ]


def _inbound(c: InitConfig) -> list[Rule]:
    skip = tuple(dict.fromkeys(ALWAYS_EXCLUDED_INBOUND + c.exclude_inbound_ports))
    rules = [Rule(INBOUND, "RETURN", tcp=True, dport=p) for p in skip]
    if c.include_inbound_ports == ALL:
        rules.append(Rule(INBOUND, IN_REDIRECT, tcp=True))
    else:
        rules += [Rule(INBOUND, IN_REDIRECT, tcp=True, dport=p)
                  for p in c.include_inbound_ports if p not in skip]
    rules.append(Rule(IN_REDIRECT, "REDIRECT", tcp=True, to_port=c.inbound_port))
    return rules


def _output(c: InitConfig, family: Family, inbound: bool) -> list[Rule]:
    lo = LOCALHOST[family]
    uid, gid = Owner("uid", c.proxy_uid), Owner("gid", c.proxy_gid)
    rules = [Rule(OUTPUT, "RETURN", src=PASSTHROUGH[family], out_iface="lo")]
    if inbound:
        # The proxy calling its own pod IP (an app calling its own service): treat it as inbound.
        rules.append(Rule(OUTPUT, INBOUND, dst=lo, not_dst=True, out_iface="lo", tcp=True,
                          owner=uid))
    rules += [
        Rule(OUTPUT, "RETURN", out_iface="lo", owner=Owner("uid", c.proxy_uid, negated=True)),
        Rule(OUTPUT, "RETURN", owner=uid),
        Rule(OUTPUT, "RETURN", owner=gid),
        Rule(OUTPUT, "RETURN", dst=lo),
    ]
    rules += [Rule(OUTPUT, "RETURN", tcp=True, dport=p) for p in c.exclude_outbound_ports]
    rules += [Rule(OUTPUT, REDIRECT, tcp=True, dport=p) for p in c.include_outbound_ports]
    rules += [Rule(OUTPUT, "RETURN", dst=str(n))
              for n in c.exclude_outbound_cidrs if n.version == family]
    if c.include_outbound_cidrs == ALL:
        rules.append(Rule(OUTPUT, REDIRECT))
    else:
        rules += [Rule(OUTPUT, REDIRECT, dst=str(n))
                  for n in c.include_outbound_cidrs if n.version == family]
    return rules


def _ordered(family: Family, rules: list[Rule]) -> Plan:
    """Sort by chain the way iptables-save walks them; a chain keeps its rules' order."""
    ours = sorted({r.chain for r in rules if r.chain.startswith(PREFIX)})
    order = {name: i for i, name in enumerate(BUILTIN_CHAINS + tuple(ours))}
    return Plan(family=family, chains=tuple(ours),
                rules=tuple(sorted(rules, key=lambda r: order[r.chain])))
