"""Shared fixtures: pod network namespaces that are always removed, and root-only skipping."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from local_cluster import netns

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the virtualenv's console scripts (remora-proxy, remora-init, ...)
# Every namespace this pytest process makes starts with this prefix, so a final sweep finds
# leftovers of this run only (other runs may be going on at the same time on this machine).
SESSION_PREFIX = f"remora-t{secrets.token_hex(2)}"
_counter = iter(range(1, 1_000_000))


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (CI timeout, kill) must unwind through the fixtures' finally blocks too.
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _raise)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    # Async tests run on uvloop, like the proxy itself.
    return {"uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = netns.have_root_and_tools()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"real-kernel test: {reason}")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.geteuid() == 0:
        netns.destroy_prefix(SESSION_PREFIX + "-")


def new_node_prefix() -> str:
    return f"{SESSION_PREFIX}-{next(_counter)}"


@pytest.fixture
def node() -> Iterator[netns.Node]:
    """A node namespace with a bridge; add pods with ``node.add_pod(name)``. Always destroyed."""
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    n = netns.Node.create(new_node_prefix())
    try:
        yield n
    finally:
        n.destroy()


@pytest.fixture
def bin_dir() -> Path:
    """Directory of the project's console scripts."""
    return BIN
