"""Golden tests of the rule planner: ``remora-init --dry-run`` output for typical settings.

The expected output lives in tests/golden/init/<case>.txt. After an intended change of the
rules, regenerate the files and review the diff:

    REMORA_UPDATE_GOLDEN=1 .venv/bin/pytest tests/init_container/test_init_plan_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from init_container.__main__ import main
from init_container.config import parse_invocation
from init_container.plan import build_plan

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "init"

CASES = {
    "defaults": [],
    "inbound_ports": ["--include-inbound-ports", "80,9080,15021"],
    "no_inbound": ["--include-inbound-ports", ""],
    "excluded_ports_and_cidrs": [
        "--exclude-inbound-ports", "22,3306",
        "--exclude-outbound-ports", "5432,6379",
        "--include-outbound-ports", "9080",
        "--exclude-outbound-cidrs", "198.19.0.0/16,fd00:19::/64,198.18.0.10/32",
    ],
    "included_cidrs_only": ["--include-outbound-cidrs", "198.19.0.0/16,198.18.0.0/24"],
    "ipv6_cidrs": ["--include-outbound-cidrs", "fd00:19::/64,fd00:18::/64",
                   "--exclude-outbound-cidrs", "fd00:19::5"],
    "no_ipv6": ["--no-ipv6"],
    "custom_proxy": ["--proxy-uid", "2000", "--proxy-gid", "2001",
                     "--inbound-port", "16006", "--outbound-port", "16001", "--dns-port", "16053"],
    "no_dns_capture": ["--dns-capture", "false", "--no-ipv6"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_matches_golden(case: str, capsys, monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith("REMORA_") and key != "REMORA_UPDATE_GOLDEN":
            monkeypatch.delenv(key)
    assert main(["--dry-run", *CASES[case]]) == 0
    out = capsys.readouterr().out
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("REMORA_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert path.exists(), f"{path} is missing: run with REMORA_UPDATE_GOLDEN=1"
    assert out == path.read_text()


def test_every_chain_is_prefixed_and_every_jump_lands_in_a_planned_chain() -> None:
    for argv in CASES.values():
        config = parse_invocation(argv, {}).config
        for family in (4, 6):
            plan = build_plan(config, family)
            assert all(c.startswith("REMORA_") for c in plan.chains)
            for rule in plan.rules:
                assert rule.chain in plan.chains or rule.chain in ("PREROUTING", "OUTPUT")
                assert rule.target in plan.chains or rule.target in ("RETURN", "REDIRECT")

