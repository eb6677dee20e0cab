"""Put a plan in place with python-iptables (the legacy nat table), atomically and idempotently.

libiptc edits an in-memory copy of the whole table and ``commit`` replaces the table in the
kernel in one step, so with autocommit off a run either lands completely or not at all. A run
flushes and refills our chains, keeps a jump that is already right, removes stale jumps and
chains, and commits once; the same code with an empty plan is ``--cleanup``.

Only one address family per process may load the REDIRECT target, so a process touches one
family only (the caller runs IPv6 in a child process).
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

from .errors import InitError
from .plan import BUILTIN_CHAINS, PREFIX, TABLE, Family, Plan, Rule

_LIBS_FIX = "install the iptables libraries: apt-get install iptables"
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13  # libiptc talks to the kernel over a raw socket


def check_privileges(status_path: str = "/proc/self/status") -> None:
    """Fail before touching anything unless this process has CAP_NET_ADMIN and CAP_NET_RAW."""
    with open(status_path) as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    missing = [name for bit, name in ((CAP_NET_ADMIN, "NET_ADMIN"), (CAP_NET_RAW, "NET_RAW"))
               if not caps >> bit & 1]
    if missing:
        raise InitError(
            f"missing capability {' and '.join(missing)} (running as uid {os.geteuid()})",
            "run remora-init as root or give the init container capabilities NET_ADMIN and NET_RAW",
        )


def load_iptc() -> ModuleType:
    """Import python-iptables, turning a missing C library into a clear error."""
    try:
        import iptc
    except Exception as e:  # ImportError, OSError, or AttributeError on a library that is absent
        raise InitError(f"python-iptables cannot load the iptables libraries ({e})",
                        _LIBS_FIX) from None
    module: ModuleType = iptc  # untyped library: give it a type once, here
    return module


def open_nat(iptc: ModuleType, family: Family) -> Any:
    """The nat table of ``family`` with autocommit off, freshly read from the kernel."""
    try:
        table = iptc.Table(TABLE) if family == 4 else iptc.Table6(TABLE)
        table.autocommit = False
        table.refresh()
    except iptc.IPTCError as e:
        fix = "load the iptable_nat kernel module (modprobe iptable_nat)"
        if family == 6:
            fix = "load ip6table_nat (modprobe ip6table_nat) or run with --no-ipv6"
        raise InitError(f"the IPv{family} nat table is unavailable ({_text(e)})", fix) from None
    return table


def nat_available(iptc: ModuleType, family: Family) -> bool:
    return bool(iptc.is_table_available(TABLE) if family == 4 else iptc.is_table6_available(TABLE))


def apply_plan(iptc: ModuleType, plan: Plan) -> None:
    """Make the nat table of ``plan.family`` hold exactly ``plan``'s chains, rules and jumps."""
    table = open_nat(iptc, plan.family)
    try:
        _stage(iptc, table, plan)
        table.commit()
    except (iptc.IPTCError, iptc.XTablesError, ValueError) as e:
        raise InitError(f"writing the IPv{plan.family} nat rules failed ({_text(e)})",
                        "remove other rules that use REMORA_ chains and check that the "
                        "iptables package is installed (apt-get install iptables)") from None
    finally:
        table.refresh()  # drops whatever was staged but not committed


def _text(error: Exception) -> str:
    """python-iptables formats libiptc's bytes messages as b'...': show them as text."""
    return re.sub(r"b'([^']*)'", r"\1", str(error))


def _stage(iptc: ModuleType, table: Any, plan: Plan) -> None:
    existing = [c.name for c in table.chains if c.name.startswith(PREFIX)]
    for name in existing:
        table.flush_entries(name)  # our chains are refilled from scratch (and unreferenced)
    for name in plan.chains:
        if name not in existing:
            table.create_chain(name)
    for name in BUILTIN_CHAINS:
        if table.is_chain(name):
            _fix_jumps(iptc, table, name, plan)
    for name in existing:
        if name not in plan.chains:
            table.delete_chain(name)
    for rule in plan.rules:
        if rule.chain.startswith(PREFIX):
            iptc.Chain(table, rule.chain).append_rule(to_iptc(iptc, plan.family, rule))


def _fix_jumps(iptc: ModuleType, table: Any, name: str, plan: Plan) -> None:
    """Keep each planned jump once where it already is; drop any other jump into our chains."""
    chain = iptc.Chain(table, name)
    wanted = [to_iptc(iptc, plan.family, r) for r in plan.rules_of(name)]
    missing = list(wanted)
    for rule in chain.rules:
        if not rule.target.name.startswith(PREFIX):
            continue
        same = next((w for w in missing if w == rule), None)
        if same is None:
            chain.delete_rule(rule)
        else:
            missing.remove(same)
    for rule in missing:
        chain.append_rule(rule)


def to_iptc(iptc: ModuleType, family: Family, rule: Rule) -> Any:
    """The python-iptables rule for ``rule``."""
    r = iptc.Rule() if family == 4 else iptc.Rule6()
    if rule.src:
        r.src = rule.src
    if rule.dst:
        r.dst = ("!" if rule.not_dst else "") + rule.dst
    if rule.out_iface:
        r.out_interface = rule.out_iface
    proto = "tcp" if rule.tcp else "udp" if rule.udp else None
    if proto:
        r.protocol = proto
    if rule.dport is not None:
        r.create_match(proto or "tcp").dport = str(rule.dport)
    if rule.owner:
        value = ("!" if rule.owner.negated else "") + str(rule.owner.id)
        setattr(r.create_match("owner"), f"{rule.owner.kind}_owner", value)
    target = r.create_target(rule.target)
    if rule.to_port is not None:
        target.to_ports = str(rule.to_port)
    return r
