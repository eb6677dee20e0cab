"""Two meshed pods for real-kernel tests: the pair lives in ``local_cluster.testing.meshpair`` (perf uses
it too); this module re-exports it and adds what only tests need (the aiohttp test apps).

    mesh = Mesh.start(node, bin_dir, services=[Service("echo", 8080)])
    try:
        mesh.client.exec(["curl", "-s", f"http://echo:8080/"], uid=APP_UID)
    finally:
        mesh.close()
"""

from __future__ import annotations

import sys
from pathlib import Path

from local_cluster.testing import meshpair
from local_cluster.testing.meshpair import *  # noqa: F403
from local_cluster.testing.meshpair import APP_UID, ProxyHandle, Service  # noqa: F401 - re-exported

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
