"""Two meshed pods for real-kernel tests: the pair lives in ``local_cluster.testing.meshpair`` (perf uses
it too); this module re-exports it and adds what only tests need (the aiohttp test apps).

    mesh = Mesh.start(node, bin_dir, services=[Service("echo", 8080)])
    try:
        mesh.client.exec(["curl", "-s", f"http://echo:8080/"], uid=APP_UID)
    finally:
        mesh.close()
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_cluster import netns
from local_cluster.testing import meshpair
from local_cluster.testing.meshpair import *  # noqa: F403
from local_cluster.testing.meshpair import APP_UID, ProxyHandle, Service  # noqa: F401 - re-exported
from sidecar.http import h2select, ngcodec

APPS = str(Path(__file__).resolve().parent / "sidecar" / "apps.py")  # test apps (aiohttp etc.)


class Mesh(meshpair.Mesh):
    @classmethod
    def start_web(cls, node, bin_dir: Path, **kw) -> Mesh:
        """A mesh with service ``web:8080`` served by the aiohttp test app in the server pod."""
        mesh = cls.start(node, bin_dir, [Service("web", 8080)], **kw)
        try:
            mesh.spawn_app([sys.executable, APPS, "http", "8080"])
            mesh.wait_port(mesh.server, 8080)
        except BaseException:
            mesh.close()
            raise
        return mesh


def codec_env(codec: str) -> dict[str, str]:
    """The proxies' environment for HTTP/2 codec ``codec`` (a ``proxy_env``); skips the test when
    the native codec is not built. nghttp2 is not forced: the proxies choose it themselves."""
    if codec == h2select.NGHTTP2:
        if not ngcodec.available():
            pytest.skip("the native HTTP/2 codec is not built (make venv builds it)")
        return {}
    return {"REMORA_H2_CODEC": codec}


@contextlib.contextmanager
def module_node(prefix: str) -> Iterator[netns.Node]:
    """A node for a module-scoped mesh (the ``node`` fixture is per test); always destroyed."""
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(netns.new_prefix(prefix))
    try:
        yield node
    finally:
        node.destroy()
