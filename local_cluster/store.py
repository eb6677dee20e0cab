"""The local cluster's object store: what an API server keeps, and nothing else.

Every write returns a ``Change`` (what happened to which key), so the reconcilers that react to
writes (pods, services, rollouts) are driven by changes rather than by the code that wrote.
Modelled on Istio's in-memory config store (pilot/pkg/config/memory): objects keyed by
(kind, namespace, name), a resource version bumped on every write, and an event per write.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace or "", name)
CREATED, CONFIGURED, DELETED = "created", "configured", "deleted"


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def now_rfc3339(precise: bool = False) -> str:
    """UTC in RFC 3339; ``precise`` adds microseconds (two restarts in one second differ)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if precise else "%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Change:
    action: str  # CREATED, CONFIGURED or DELETED
    key: Key
    obj: dict[str, Any] | None  # None once deleted
    old: dict[str, Any] | None


class Store:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.version = 0
        self.listeners: list[Callable[[Change], None]] = []

    def _emit(self, change: Change) -> Change:
        for listener in self.listeners:
            listener(change)
        return change

    def put(self, obj: dict[str, Any]) -> Change:
        """Store ``obj`` (kept: uid, creation time; bumped: resourceVersion, generation on spec)."""
        self.version += 1
        key = key_of(obj)
        old = self.objects.get(key)
        meta = obj["metadata"]
        old_meta = old["metadata"] if old else {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or now_rfc3339()
        meta["resourceVersion"] = str(self.version)
        generation = int(old_meta.get("generation", 0))
        if old is None or old.get("spec") != obj.get("spec"):
            generation += 1
        meta["generation"] = generation
        self.objects[key] = obj
        return self._emit(Change(CONFIGURED if old else CREATED, key, obj, old))

    def remove(self, key: Key) -> Change | None:
        old = self.objects.pop(key, None)
        if old is None:
            return None
        self.version += 1
        return self._emit(Change(DELETED, key, None, old))

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.objects.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self.objects

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and (namespace is None or ns == namespace)]
