"""The interface both configuration sources implement."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from control_plane.registry import KINDS
from control_plane.resources import Key, key_of


class Source(abc.ABC):
    """Holds the current objects by (kind, namespace, name); ``run`` keeps them up to date."""

    name = "?"

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}
        self.ready = False  # the first full load is done

    def objects(self) -> list[dict[str, Any]]:
        return list(self._objects.values())

    def replace_all(self, objects: list[dict[str, Any]]) -> bool:
        """Swap in a full new set (kinds the mesh does not read are dropped); True when changed."""
        new = {key_of(o): o for o in objects if o.get("kind") in KINDS}
        changed = new != self._objects
        self._objects = new
        return changed

    def put(self, obj: dict[str, Any]) -> bool:
        if obj.get("kind") not in KINDS:
            return False
        key = key_of(obj)
        changed = self._objects.get(key) != obj
        self._objects[key] = obj
        return changed

    def delete(self, key: Key) -> bool:
        return self._objects.pop(key, None) is not None

    @abc.abstractmethod
    async def run(self, on_change: Callable[[], None]) -> None:
        """Load, call ``on_change``, then watch for changes forever (calling it on each)."""
