"""``remoractl check --pre-install`` on this host (real namespaces, iptables, uid 1337), and each
check against a broken setup (a missing tool, a Python uid 1337 cannot run, no root)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

from remoractl import checks
from remoractl.cli import build_parser

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables, setuid)")


def remoractl(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(list(argv))
    with contextlib.redirect_stdout(out):
        code = args.run(args)
    return code, out.getvalue()


@needs_root
def test_pre_install_passes_on_this_host() -> None:
    code, out = remoractl("check", "--pre-install")
    assert code == 0, out
    assert out.count("\u2714") == 6 and "\u2716" not in out  # five checks and the summary
    code, out = remoractl("check", "--pre-install", "-o", "json")
    assert {r["name"] for r in json.loads(out) if r["ok"]} >= {"permissions", "iptables backends"}


@needs_root
def test_python_that_uid_1337_cannot_run(tmp_path: Path) -> None:
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(sys.executable)
    r = checks.python_for_proxy(str(private / "python3"))
    assert not r.ok and "private home directory" in r.hint
    assert str(r).startswith("\u2716 Python usable by uid 1337:") and "\n    hint: " in str(r)
    code, out = remoractl("check", "--pre-install", "--python", str(private / "python3"))
    assert code == 1 and "1 check(s) failed" in out


def test_missing_tools_and_no_root() -> None:
    r = checks.iptables_backends(legacy="iptables-legacy-missing")
    assert not r.ok and "iptables-legacy-missing not found" in r.detail and "apt-get install iptables" in r.hint
    r = checks.network_namespaces(ip="ip-missing")
    assert not r.ok and "iproute2" in r.hint
    r = checks.kernel_features(ip="ip-missing")
    assert not r.ok and r.detail.startswith("cannot try")
    r = checks.permissions(euid=1000)
    assert not r.ok and "running as uid 1000" in r.detail


@needs_root
def test_checks_leave_no_namespace_behind() -> None:
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert checks.kernel_features().ok and checks.network_namespaces().ok
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - before if n.startswith("rl-check-")}
