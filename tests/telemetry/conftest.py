"""Telemetry tests: one node per test module (its meshes are shared by the module's tests)."""

from __future__ import annotations

import itertools
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_cluster import netns

for _kit in ("control_plane", "local_cluster"):  # cp_mesh, lc_kit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / _kit))

# As the root conftest's prefix: short enough for interface names, swept at the end.
PREFIX = f"remora-e{secrets.token_hex(2)}"
_counter = itertools.count(1)


@pytest.fixture(scope="module")
def module_node() -> Iterator[netns.Node]:
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(f"{PREFIX}-{next(_counter)}")
    try:
        yield node
    finally:
        node.destroy()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.geteuid() == 0:
        netns.destroy_prefix(PREFIX + "-")
