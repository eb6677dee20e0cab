"""Helpers for the local cluster's real tests: run `remoractl local` against a private cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from local_cluster import config, netns

REMORACTL = str(Path(sys.executable).parent / "remoractl")


class LocalCluster:
    def __init__(self, state_dir: Path, prefix: str) -> None:
        self.state = config.StateDir(state_dir)
        self.prefix = prefix
        self.env = {**os.environ, "REMORA_LOCAL_DIR": str(state_dir), "REMORA_LOCAL_PREFIX": prefix}

    def ctl(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([REMORACTL, "local", *args], env=self.env, capture_output=True,
                              text=True, input=input, timeout=timeout)

    def ok(self, *args: str, input: str | None = None) -> str:
        res = self.ctl(*args, input=input)
        assert res.returncode == 0, f"remoractl local {' '.join(args)}: {res.stderr}{res.stdout}"
        return res.stdout

    def apply(self, text: str, namespace: str = "default") -> str:
        return self.ok("apply", "-n", namespace, "-f", "-", input=text)

    def status(self) -> dict[str, Any]:
        from local_cluster import client

        return client.checked(self.state, "GET", "/status")

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        for p in self.status()["pods"]:
            if (p["namespace"], p["name"]) == (namespace, name):
                return p
        return None

    def wait_pod(self, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
                 timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.pod(namespace, name)
            if last is not None and check(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"pod {namespace}/{name} did not get there: {json.dumps(last)}\n"
                             f"logs: {self.all_logs(namespace, name)}")

    def all_logs(self, namespace: str, name: str) -> str:
        d = self.state.pod_dir(namespace, name) / "logs"
        return "".join(f"--- {f.name}\n{f.read_text(errors='replace')}" for f in sorted(d.glob("*.log"))) \
            if d.is_dir() else "(none)"

    def leftovers(self) -> list[str]:
        found = [n for n in netns.list_netns() if n.startswith(self.prefix + "-")]
        found += [str(p) for p in netns.NETNS_ETC.glob(f"{self.prefix}-*")]
        if self.state.root.exists():
            found.append(str(self.state.root))
        return found


@contextmanager
def local_cluster(state_dir: Path, prefix: str | None = None) -> Iterator[LocalCluster]:
    """A running local cluster that is always torn down (even when the test fails)."""
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    lc = LocalCluster(state_dir, prefix or netns.new_prefix("lc"))
    try:
        lc.ok("up", "--prefix", lc.prefix)
        yield lc
    finally:
        lc.ctl("down")


@contextmanager
def sample_cluster(state_dir: Path, timeout: float = 150) -> Iterator[LocalCluster]:
    """A local cluster running the sample app (examples/manifests), every pod ready."""
    from local_cluster.testing import sample

    with local_cluster(state_dir) as lc:
        sample.apply(lc.state)
        sample.wait_ready(lc.state, timeout=timeout)
        yield lc
