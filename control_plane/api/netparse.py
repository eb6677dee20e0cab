"""Parsers for comma-separated ports and CIDRs, shared by remora-init and the injector.

Pure functions: each raises ValueError with a message that names the bad item, so a caller can
prefix it with where the text came from (a flag, an environment variable, an annotation).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable
from typing import Literal, TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T", bound=Hashable)

ALL: Literal["*"] = "*"
"""The wildcard accepted by the include lists: every port, or every address."""


def parse_port(text: str) -> int:
    """A TCP port 1..65535 written in decimal."""
    item = text.strip()
    if not item.isdecimal():
        if "-" in item or ":" in item:
            raise ValueError(f"port range {item!r} is not supported (list each port)")
        raise ValueError(f"port {item!r} is not a number")
    port = int(item)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def parse_ports(text: str) -> tuple[int, ...]:
    """A comma-separated list of ports; empty text is the empty list. Duplicates are dropped."""
    return _dedupe(parse_port(item) for item in _items(text))


def parse_port_selection(text: str) -> Literal["*"] | tuple[int, ...]:
    """``*`` (every port), empty (no port) or a comma-separated list of ports."""
    return ALL if text.strip() == ALL else parse_ports(text)


def parse_cidr(text: str) -> IPNetwork:
    """An IPv4 or IPv6 network; a bare address is a host network, host bits are cleared."""
    item = text.strip()
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"{item!r} is not a CIDR such as 198.18.0.0/15 or fd00::/8") from None


def parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of CIDRs (IPv4 and IPv6 mixed); empty text is the empty list."""
    return _dedupe(parse_cidr(item) for item in _items(text))


def parse_cidr_selection(text: str) -> Literal["*"] | tuple[IPNetwork, ...]:
    """``*`` (every address), empty (none) or a comma-separated list of CIDRs."""
    return ALL if text.strip() == ALL else parse_cidrs(text)


def _items(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        return []
    if "" in items:
        raise ValueError(f"empty item in list {text!r}")
    if ALL in items:
        raise ValueError(f"'*' must stand alone, not inside the list {text!r}")
    return items


def _dedupe(values: Iterable[_T]) -> tuple[_T, ...]:  # keeps the first occurrence's position
    return tuple(dict.fromkeys(values))
