"""remora-init in bad environments: one clear line, the right exit code, no half-written rules."""

from __future__ import annotations

import ctypes.util
import glob
from pathlib import Path

import pytest
from init_kit import INIT, init_ok, remora_lines, run_init

from control_plane.api.ports import PROXY_UID
from local_cluster.netns import Node, Pod

pytestmark = pytest.mark.root


def _nothing_written(pod: Pod) -> None:
    assert remora_lines(pod, 4) == [] and remora_lines(pod, 6) == []


def _one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("remora-init: "), stderr
    assert "; " in stderr  # what is wrong; how to fix it
    return stderr


def test_not_root_fails_before_touching_anything(node: Node) -> None:
    a = node.add_pod("a")
    res = run_init(a, uid=PROXY_UID)
    assert res.returncode == 1
    assert "missing capability NET_ADMIN and NET_RAW (running as uid 1337)" in _one_line(res.stderr)
    _nothing_written(a)


def test_root_without_net_admin_fails(node: Node) -> None:
    a = node.add_pod("a")
    res = a.exec(["setpriv", "--bounding-set=-net_admin", "--", INIT])
    assert res.returncode == 1
    assert "missing capability NET_ADMIN (running as uid 0)" in _one_line(res.stderr)
    _nothing_written(a)


def test_dry_run_needs_no_privilege(node: Node) -> None:
    a = node.add_pod("a")
    res = run_init(a, "--dry-run", uid=PROXY_UID)
    assert res.returncode == 0, res.stderr
    assert "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in res.stdout
    _nothing_written(a)


def test_missing_iptables_library(node: Node) -> None:
    a = node.add_pod("a")
    lib = _libip4tc()
    # A private mount namespace where the library is an empty file, as if it were not installed.
    res = a.exec(["unshare", "-m", "sh", "-c", f'mount --bind /dev/null {lib} && exec "$0"', INIT])
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert "python-iptables cannot load the iptables libraries" in line
    assert "apt-get install iptables" in line
    _nothing_written(a)


@pytest.mark.parametrize("args, message", [
    (["--outbound-port", "0"], "--outbound-port: port 0 is out of range 1-65535"),
    (["--exclude-inbound-ports", "70000"], "port 70000 is out of range"),
    (["--exclude-outbound-cidrs", "198.18.0.0/33"], "'198.18.0.0/33' is not a CIDR"),
])
def test_bad_input_exits_2_and_writes_nothing(node: Node, args: list[str], message: str) -> None:
    a = node.add_pod("a")
    res = run_init(a, *args)
    assert res.returncode == 2
    assert message in _one_line(res.stderr)
    _nothing_written(a)


@pytest.mark.parametrize("failing", [4, 6])
def test_failure_in_one_family_takes_back_the_other(node: Node, failing: int) -> None:
    """A stale REMORA_ chain that someone else's chain still uses cannot be deleted: writing
    that family fails while the other family succeeds, and the other must be taken back."""
    a = node.add_pod("a")
    tool = "iptables-legacy" if failing == 4 else "ip6tables-legacy"
    for cmd in (["-N", "REMORA_OLD"], ["-N", "OTHER"], ["-A", "OTHER", "-j", "REMORA_OLD"]):
        a.exec([tool, "-t", "nat", *cmd], check=True)
    res = run_init(a)
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert f"writing the IPv{failing} nat rules failed" in line and "REMORA_OLD" in line
    assert remora_lines(a, 10 - failing) == []  # the family that worked was taken back
    assert remora_lines(a, failing) == [":REMORA_OLD - [0:0]", "-A OTHER -j REMORA_OLD"]
    a.exec([tool, "-t", "nat", "-F", "OTHER"], check=True)
    init_ok(a)  # once the reference is gone, a rerun succeeds and removes the stale chain
    assert ":REMORA_OLD - [0:0]" not in remora_lines(a, failing)


def _libip4tc() -> str:
    name = ctypes.util.find_library("ip4tc")
    found = glob.glob(f"/usr/lib/*/{name}") or glob.glob(f"/lib/*/{name}")
    assert found, "libip4tc not found"
    return str(Path(found[0]).resolve())
