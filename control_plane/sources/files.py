"""A directory of Kubernetes-style YAML (or JSON) manifests, reloaded when a file changes.

This is what the local cluster writes and most tests use. The directory is polled (mtime,
size and inode of every file): cheap for hundreds of files, and it needs no inotify.
A file that fails to parse is reported and its previous content is kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from control_plane.sources.base import Source

log = logging.getLogger("remora.control.files")
SUFFIXES = (".yaml", ".yml", ".json")


def read_manifests(path: Path) -> list[dict[str, Any]]:
    """Every object in one file (multi-document YAML and ``kind: List`` are expanded)."""
    out: list[dict[str, Any]] = []
    with path.open() as f:
        for doc in yaml.safe_load_all(f):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ValueError(f"{path}: a document is a {type(doc).__name__}, not an object")
            if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
                out.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            else:
                out.append(doc)
    return out


class FilesSource(Source):
    name = "files"

    def __init__(self, directory: Path, interval: float = 0.2) -> None:
        super().__init__()
        self.directory = directory
        self.interval = interval
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._by_file: dict[Path, list[dict[str, Any]]] = {}
        self.errors: dict[Path, str] = {}

    def _scan(self) -> dict[Path, tuple[int, int, int]]:
        stamps = {}
        for root, dirs, files in os.walk(self.directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIXES):
                    continue  # editors' swap files and temporary files
                p = Path(root, name)
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                stamps[p] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stamps

    def reload(self) -> bool:
        """Re-read changed files; True when the set of objects changed."""
        stamps = self._scan()
        if stamps == self._stamps:
            return False
        for p in set(self._by_file) - set(stamps):
            del self._by_file[p]
            self.errors.pop(p, None)
        for p, stamp in stamps.items():
            if self._stamps.get(p) == stamp:
                continue
            try:
                self._by_file[p] = read_manifests(p)
                self.errors.pop(p, None)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                msg = str(exc).replace("\n", " ")
                if self.errors.get(p) != msg:
                    log.error("cannot read %s (keeping its previous objects): %s", p, msg)
                self.errors[p] = msg
        self._stamps = stamps
        return self.replace_all([o for p in sorted(self._by_file) for o in self._by_file[p]])

    async def run(self, on_change: Callable[[], None]) -> None:
        if not self.directory.is_dir():
            raise ValueError(f"--dir {self.directory}: not a directory")
        self.reload()
        self.ready = True
        on_change()
        while True:
            await asyncio.sleep(self.interval)
            if self.reload():
                log.info("manifests changed in %s (%d objects)", self.directory, len(self._objects))
                on_change()
