"""Helpers for the real-kernel tests of remora-init: run it in a pod, read rules, probe traffic."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from control_plane.api.ports import PROXY_UID
from local_cluster.netns import Pod, stop_process

BIN = Path(sys.executable).parent
INIT = str(BIN / "remora-init")
PROBE = str(Path(__file__).with_name("origdst_probe.py"))
RESOLVER = str(Path(__file__).parents[1] / "fake_resolver.py")
APP_UID = 1000  # an application's uid: neither root nor the proxy


def run_init(pod: Pod, *args: str, **kw) -> subprocess.CompletedProcess:
    """remora-init inside ``pod``; keyword arguments go to ``pod.exec`` (uid=, env=, ...)."""
    return pod.exec([INIT, *args], **kw)


def init_ok(pod: Pod, *args: str) -> None:
    res = run_init(pod, *args)
    assert res.returncode == 0, res.stderr


def saved(pod: Pod, family: int = 4) -> str:
    """The pod's whole nat table as iptables-legacy-save prints it."""
    tool = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    return pod.exec([tool, "-t", "nat"], check=True).stdout


def remora_lines(pod: Pod, family: int = 4) -> list[str]:
    """Only the lines about REMORA_ chains, without save's date comments."""
    return [line for line in saved(pod, family).splitlines() if "REMORA_" in line]


def dry_run_lines(*args: str, family: int = 4) -> list[str]:
    """The REMORA_ lines that --dry-run prints for one family."""
    out = subprocess.run([INIT, "--dry-run", *args], capture_output=True, text=True, check=True)
    section = out.stdout.split(f"plan for IPv{family};")[1].split("COMMIT")[0]
    return [line for line in section.splitlines() if "REMORA_" in line and line[0] in ":-"]


@contextlib.contextmanager
def _ready(pod: Pod, argv: list[str], uid: int, what: str) -> Iterator[None]:
    """Run ``argv`` in ``pod`` until the block ends, once it has printed ``ready``."""
    proc = pod.spawn(argv, uid=uid, gid=uid, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        assert line == "ready", f"{what} did not start: {proc.stderr.read1()!r}"
        yield
    finally:
        stop_process(proc)
        proc.stdout.close()
        proc.stderr.close()


def serving(pod: Pod, port: int, tag: str, uid: int = PROXY_UID,
            ipv4_only: bool = False) -> contextlib.AbstractContextManager[None]:
    """A probe server on ``port`` in ``pod`` (as the proxy uid by default), stopped on exit."""
    argv = [sys.executable, PROBE, "serve", str(port), tag, *(["4"] if ipv4_only else [])]
    return _ready(pod, argv, uid, f"probe server on {port}")


def resolving(pod: Pod, port: int, address: str, uid: int = APP_UID,
              bind: str = "0.0.0.0") -> contextlib.AbstractContextManager[None]:
    """A fake DNS server on ``port`` in ``pod`` answering every A query with ``address``."""
    argv = [sys.executable, RESOLVER, str(port), address, bind]
    return _ready(pod, argv, uid, f"fake resolver on {port}")


def ask(pod: Pod, host: str, port: int, uid: int = APP_UID, gid: int | None = None,
        source: str | None = None) -> str:
    """Connect from ``pod`` as ``uid``/``gid`` and return the answer, e.g. ``proxy 1.2.3.4 80``."""
    argv = [sys.executable, PROBE, "ask", host, str(port), *([source] if source else [])]
    res = pod.exec(argv, uid=uid, gid=gid if gid is not None else uid, timeout=20)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()

