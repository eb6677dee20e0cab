"""Values as Istio accepts them, read strictly with field paths, and notes for what is not implemented.

Every reader raises ValueError("<path>: <what is wrong>") for a wrong type or an out-of-range
value, so the registry can reject the resource with the exact field. Fields that are present
but not implemented go to ``Notes`` (they travel in every snapshot, the control-plane log and
``remoractl proxy-status``), never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from control_plane.api import model, re2

API_GROUPS = {"networking.istio.io": ("v1", "v1beta1", "v1alpha3"), "security.istio.io": ("v1", "v1beta1")}

# Go/protobuf durations: "1h", "1m30s", "0.5s", "500ms", "10us".
_DURATION = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h)(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))*$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Notes:
    """Collects "Kind/ns/name: path ..." for fields that are present but not implemented."""

    def __init__(self, kind: str, meta: Mapping[str, Any]) -> None:
        self.prefix = f"{kind}/{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
        self.items: list[str] = []

    def extra(self, obj: Mapping[str, Any], implemented: set[str] | frozenset[str], path: str) -> None:
        for k in sorted(set(obj) - set(implemented)):
            self.items.append(f"{self.prefix}: {path}.{k} is not implemented yet")

    def add(self, path: str, what: str) -> None:
        self.items.append(f"{self.prefix}: {path} {what}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {_kind(value)}")
    return value


def listing(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a list, got {_kind(value)}")
    return value


def string(value: Any, path: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {value!r}")
    if not value and not empty:
        raise ValueError(f"{path}: must not be empty")
    return value


def integer(value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    if hi is None and lo is not None and value < lo:
        raise ValueError(f"{path}: {value} is less than {lo}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{path}: {value} is outside {lo}-{hi}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{path}: expected true or false, got {value!r}")
    return value


def port(value: Any, path: str) -> int:
    return integer(value, path, 1, 65535)


def string_map(value: Any, path: str) -> dict[str, str]:
    return {str(k): string(v, f"{path}.{k}", empty=True) for k, v in mapping(value, path).items()}


def duration(value: Any, path: str, *, allow_zero: bool = False) -> float:
    """A protobuf/Go duration ("1m30s", "0.5s", "500ms", "1h") in seconds."""
    text = value if isinstance(value, str) else ""
    if not _DURATION.match(text):
        raise ValueError(f"{path}: expected a duration such as 5s, 0.5s, 500ms or 1m30s, got {value!r}")
    seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
    if seconds < 0.001 and not (allow_zero and seconds == 0):
        raise ValueError(f"{path}: {value!r} is shorter than 1ms")
    return seconds


def percent(value: Any, path: str) -> float:
    """Istio's Percent ({value: 12.5}) in 0-100."""
    v = mapping(value, path).get("value", 0)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{path}.value: expected a number, got {v!r}")
    if not 0 <= v <= 100:
        raise ValueError(f"{path}.value: {v} is outside 0-100")
    return float(v)


def string_match(value: Any, path: str, notes: Notes, *, presence: bool = False) -> model.StringMatch:
    """Istio's StringMatch (one of exact, prefix, regex); ``presence`` allows {} (header present)."""
    m = mapping(value, path)
    notes.extra(m, {"exact", "prefix", "regex"}, path)
    given = [k for k in ("exact", "prefix", "regex") if k in m]
    if len(given) > 1:
        raise ValueError(f"{path}: set only one of exact, prefix, regex (got {', '.join(given)})")
    if not given and not presence:
        raise ValueError(f"{path}: set one of exact, prefix, regex")
    if not given:
        return model.StringMatch()
    key = given[0]
    text = string(m[key], f"{path}.{key}", empty=key != "regex")
    if key == "regex":
        re2.check(text, f"{path}.regex")
    return model.StringMatch(**{key: text})


def export_to(spec: Mapping[str, Any], notes: Notes) -> None:
    """exportTo: "*" (the default) is what Remora does; narrower visibility is reported."""
    if "exportTo" in spec:
        targets = [string(t, f"spec.exportTo[{i}]") for i, t in enumerate(listing(spec["exportTo"], "spec.exportTo"))]
        if targets != ["*"]:
            notes.add("spec.exportTo", f"{targets} is not implemented yet (visible to every namespace)")


def check_api_version(obj: Mapping[str, Any]) -> None:
    """Known Istio groups must use a served version (v1, v1beta1; v1alpha3 for networking)."""
    api = obj.get("apiVersion")
    if api is None:
        return
    group, _, version = str(api).rpartition("/")
    served = API_GROUPS.get(group)
    if served is not None and version not in served:
        raise ValueError(f"apiVersion: {api!r} is not served; use {group}/{served[0]}")


def open_resource(kind: str, obj: Mapping[str, Any], implemented: set[str]) -> tuple[
        Mapping[str, Any], str, Notes, Mapping[str, Any]]:
    """(metadata, namespace, notes, spec) of one resource, with its unimplemented spec fields noted."""
    check_api_version(obj)
    meta = mapping(obj.get("metadata"), "metadata")
    string(meta.get("name"), "metadata.name")
    notes = Notes(kind, meta)
    spec = mapping(obj.get("spec") or {}, "spec")
    notes.extra(spec, set(implemented) | {"exportTo"}, "spec")
    export_to(spec, notes)
    return meta, str(meta.get("namespace") or "default"), notes, spec
