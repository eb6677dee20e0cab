"""Flags and environment of `remora-init` → one validated, frozen configuration.

Each flag has an environment fallback (the injector fills those from pod annotations); a flag
given on the command line wins over its variable. Bad input raises ConfigError whose text is
one line: what is wrong, then how to fix it.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from control_plane.api import annotations as ann
from control_plane.api import netparse
from control_plane.api.netparse import IPNetwork
from control_plane.api.ports import DNS_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_GID, PROXY_UID

MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, so it is no valid owner


class ConfigError(ValueError):
    """Bad input. ``str()`` is ``<what is wrong>; <how to fix it>``."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")


class Action(enum.Enum):
    APPLY = "apply"
    DRY_RUN = "dry-run"
    CLEANUP = "cleanup"
    VERIFY = "verify"


@dataclass(frozen=True)
class InitConfig:
    """What to capture. ``"*"`` means every port or address; an empty tuple means none."""

    proxy_uid: int = PROXY_UID
    proxy_gid: int = PROXY_GID
    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    include_inbound_ports: Literal["*"] | tuple[int, ...] = "*"
    exclude_inbound_ports: tuple[int, ...] = ()
    include_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    include_outbound_cidrs: Literal["*"] | tuple[IPNetwork, ...] = "*"
    exclude_outbound_cidrs: tuple[IPNetwork, ...] = ()
    ipv6: bool = True
    dns_capture: bool = True  # the app's port-53 traffic (UDP and TCP) to the proxy's dns_port
    dns_port: int = DNS_PORT


@dataclass(frozen=True)
class Invocation:
    config: InitConfig
    action: Action
    family: Literal[4, 6] | None  # internal --family: handle only this address family, in this process


def _uid(text: str) -> int:
    item = text.strip()
    if not item.isdecimal() or int(item) > MAX_ID:
        raise ValueError(f"{item!r} is not a numeric id 0-{MAX_ID}")
    return int(item)


def _bool(text: str) -> bool:
    item = text.strip().lower()
    if item in ("1", "true", "yes", "on"):
        return True
    if item in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


_PORTS_FIX = "give a comma-separated list of ports 1-65535, e.g. 80,8080"
_CIDRS_FIX = "give a comma-separated list of CIDRs, e.g. 198.18.0.0/15,fd00::/8"


@dataclass(frozen=True)
class _Option:
    field: str
    default: str
    parse: Callable[[str], object]
    fix: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "REMORA_" + self.field.upper()


OPTIONS = (
    _Option("proxy_uid", str(PROXY_UID), _uid, "give the proxy's numeric uid"),
    _Option("proxy_gid", str(PROXY_GID), _uid, "give the proxy's numeric gid"),
    _Option("inbound_port", str(INBOUND_PORT), netparse.parse_port, "give a port 1-65535"),
    _Option("outbound_port", str(OUTBOUND_PORT), netparse.parse_port, "give a port 1-65535"),
    _Option("include_inbound_ports", "*", netparse.parse_port_selection,
            _PORTS_FIX + ", '*' for all or empty for none"),
    _Option("exclude_inbound_ports", "", netparse.parse_ports, _PORTS_FIX),
    _Option("include_outbound_ports", "", netparse.parse_ports, _PORTS_FIX),
    _Option("exclude_outbound_ports", "", netparse.parse_ports, _PORTS_FIX),
    _Option("include_outbound_cidrs", "*", netparse.parse_cidr_selection,
            _CIDRS_FIX + ", '*' for all or empty for none"),
    _Option("exclude_outbound_cidrs", "", netparse.parse_cidrs, _CIDRS_FIX),
    _Option("ipv6", "true", _bool, "use true or false"),
    # The annotation's own domain: remora-init takes exactly what the webhook lets through.
    _Option("dns_capture", "true", ann.BOOLEAN.parse, "use true or false"),
    _Option("dns_port", str(DNS_PORT), netparse.parse_port, "give a port 1-65535"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, no usage dump
        raise ConfigError(message, "see remora-init --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="remora-init",
        description="Write the pod's iptables rules that send its TCP traffic through the "
        "Remora sidecar. Every flag falls back to its REMORA_* environment variable.",
    )
    for opt in OPTIONS:
        if opt.field == "ipv6":
            p.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=None,
                           help=f"also write ip6tables rules (env {opt.env}, default true)")
        else:
            p.add_argument(opt.flag, dest=opt.field, default=None, metavar="VALUE",
                           help=f"env {opt.env}, default {opt.default!r}")
    actions = p.add_mutually_exclusive_group()
    for act in (Action.DRY_RUN, Action.CLEANUP, Action.VERIFY):
        actions.add_argument("--" + act.value, dest="action", action="store_const", const=act)
    p.add_argument("--family", type=int, choices=(4, 6), help=argparse.SUPPRESS)
    return p


def parse_invocation(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """Parse flags (falling back to ``env``, then defaults) and check them together."""
    args = _parser().parse_args(list(argv))
    values: dict[str, object] = {}
    for opt in OPTIONS:
        flag_value = getattr(args, opt.field)
        if opt.field == "ipv6" and flag_value is not None:
            values[opt.field] = flag_value
            continue
        if flag_value is not None:
            source, text = opt.flag, flag_value
        elif opt.env in env:
            source, text = opt.env, env[opt.env]
        else:
            source, text = "default", opt.default
        try:
            values[opt.field] = opt.parse(text)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}", opt.fix) from None
    config = InitConfig(**values)  # type: ignore[arg-type]
    _check(config)
    return Invocation(config=config, action=args.action or Action.APPLY, family=args.family)


def _check(c: InitConfig) -> None:
    if c.inbound_port == c.outbound_port:
        raise ConfigError(f"inbound and outbound port are both {c.inbound_port}",
                          "give the proxy two different ports")
    if c.dns_capture and c.dns_port in (c.inbound_port, c.outbound_port):
        raise ConfigError(f"the DNS port {c.dns_port} is also the inbound or outbound port",
                          "give the proxy's DNS its own port")
    both = sorted(set(c.include_outbound_ports) & set(c.exclude_outbound_ports))
    if both:
        raise ConfigError(
            f"port {both[0]} is both included and excluded outbound",
            "remove it from --include-outbound-ports or --exclude-outbound-ports",
        )
