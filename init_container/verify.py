"""Compare the rules in place with the plan, as text: what ``iptables-legacy-save`` shows.

Only what Remora owns is compared: the REMORA_ chains, their rules, and the jumps into them
from any chain. Rules of others in the same table are left alone and ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import InitError
from .plan import BUILTIN_CHAINS, PREFIX, TABLE, Family, Plan

SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}


def saved_nat(family: Family) -> str:
    """The nat table of ``family`` as iptables-legacy-save prints it."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    binary = shutil.which(SAVE[family], path=path)
    if binary is None:
        raise InitError(f"{SAVE[family]} is not installed", "apt-get install iptables")
    proc = subprocess.run([binary, "-t", TABLE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InitError(f"{SAVE[family]} failed: {proc.stderr.strip() or proc.returncode}",
                        "run as root with NET_ADMIN in the pod's network namespace")
    return proc.stdout


def ours(lines: list[str]) -> dict[str, list[str]]:
    """Our part of save output: ``{"": chain declarations, chain: its rules}``."""
    found: dict[str, list[str]] = {"": []}
    for line in lines:
        if line.startswith(":" + PREFIX):
            found[""].append(line.split()[0][1:])
        elif line.startswith("-A "):
            words = line.split()
            if words[1].startswith(PREFIX) or _jumps_to_ours(words):
                found.setdefault(words[1], []).append(line)
    return found


def _jumps_to_ours(words: list[str]) -> bool:
    return any(w in ("-j", "-g") and i + 1 < len(words) and words[i + 1].startswith(PREFIX)
               for i, w in enumerate(words))


def first_difference(plan: Plan, saved: str) -> str | None:
    """None when ``saved`` holds exactly the plan's chains, rules and jumps, else the first
    difference in words."""
    want = ours(plan.lines())
    have = ours(saved.splitlines())
    fam = f"IPv{plan.family}"
    for name in want[""]:
        if name not in have[""]:
            return f"{fam} chain {name} is missing"
    for name in have[""]:
        if name not in want[""]:
            return f"{fam} has chain {name}, which the plan does not"
    chains = list(BUILTIN_CHAINS) + want[""]
    chains += sorted(c for c in have if c and c not in chains)
    for chain in chains:
        w, h = want.get(chain, []), have.get(chain, [])
        for i, (wr, hr) in enumerate(zip(w, h, strict=False), 1):
            if wr != hr:
                return f"{fam} {chain} rule {i} is {hr!r}, the plan has {wr!r}"
        if len(h) < len(w):
            return f"{fam} {chain} lacks {w[len(h)]!r}"
        if len(h) > len(w):
            return f"{fam} {chain} has {h[len(w)]!r}, which the plan does not"
    return None
