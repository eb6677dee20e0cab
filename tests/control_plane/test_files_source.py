"""Files source: loads a directory, reloads on change, keeps the last good copy of a bad file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from control_plane.sources.files import FilesSource

SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{clusterIP: 198.19.0.5, ports: [{{name: http, port: 80}}]}}
"""


def names(src: FilesSource) -> list[str]:
    return sorted(o["metadata"]["name"] for o in src.objects())


async def test_reload_on_change(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SVC.format(name="a") + "---\nkind: ConfigMap\nmetadata: {name: ignored}\n")
    src = FilesSource(tmp_path, interval=0.05)
    changes = asyncio.Queue()
    task = asyncio.create_task(src.run(lambda: changes.put_nowait(names(src))))
    try:
        assert await asyncio.wait_for(changes.get(), 2) == ["a"]  # kinds the mesh ignores are dropped
        sub = tmp_path / "sub"
        sub.mkdir()
        (sub / "b.yml").write_text(SVC.format(name="b"))
        assert await asyncio.wait_for(changes.get(), 2) == ["a", "b"]
        (tmp_path / "a.yaml").write_text("kind: [unclosed")
        await asyncio.sleep(0.3)
        assert changes.empty() and names(src) == ["a", "b"]  # bad file: previous objects kept
        assert "a.yaml" in str(next(iter(src.errors)))
        (tmp_path / "a.yaml").unlink()
        assert await asyncio.wait_for(changes.get(), 2) == ["b"]
        assert not src.errors
    finally:
        task.cancel()
