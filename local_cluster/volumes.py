"""A pod's volumes as directories under its state directory, and each container's mounts.

emptyDir, configMap and projected (serviceAccountToken, configMap) volumes are supported; the
launcher bind-mounts them at the containers' mountPaths. Host paths and secrets are refused:
the local cluster never hands a pod a file of the host's own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from local_cluster.podenv import SpecError

DEFAULT_TOKEN_SECONDS = 3600
# mint(audience, ttl_seconds) -> token for the pod's service account
Minter = Callable[[str, int], str]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _config_map_files(src: dict[str, Any], configmaps: Mapping[str, Mapping[str, str]],
                      where: str) -> dict[str, str]:
    data = configmaps.get(src.get("name", ""))
    if data is None:
        if src.get("optional"):
            return {}
        raise SpecError(f"{where}: ConfigMap {src.get('name')!r} not found; apply it first")
    items = src.get("items")
    if not items:
        return {k: str(v) for k, v in data.items()}
    out = {}
    for item in items:
        if item.get("key") not in data:
            raise SpecError(f"{where}: ConfigMap {src.get('name')!r} has no key {item.get('key')!r}")
        out[item.get("path") or item["key"]] = str(data[item["key"]])
    return out


def _safe_relative(path: str, where: str) -> str:
    if os.path.isabs(path) or ".." in Path(path).parts:
        raise SpecError(f"{where}: path {path!r} must be relative and must not contain '..'")
    return path


def _owners(pod_spec: dict[str, Any], uid_of: Mapping[str, tuple[int, int]]) -> dict[str, set]:
    """volume name -> the (uid, gid) of every container that mounts it."""
    owners: dict[str, set] = {}
    for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for m in c.get("volumeMounts") or []:
            owners.setdefault(m.get("name"), set()).add(uid_of[c["name"]])
    return owners


def prepare(
    pod_spec: dict[str, Any], root: Path, configmaps: Mapping[str, Mapping[str, str]],
    mint: Minter, uid_of: Mapping[str, tuple[int, int]],
) -> dict[str, Path]:
    """Create every volume's directory under ``root``; returns {volume name: directory}."""
    owners = _owners(pod_spec, uid_of)
    out: dict[str, Path] = {}
    for vol in pod_spec.get("volumes") or []:
        name = vol.get("name")
        where = f"volume {name!r}"
        d = root / name
        if "emptyDir" in vol:
            d.mkdir(parents=True, exist_ok=True)
            users = owners.get(name, set())
            if len(users) == 1:  # one user: its own directory, as an fsGroup-less kubelet would
                uid, gid = next(iter(users))
                os.chown(d, uid, gid)
                os.chmod(d, 0o750)
            else:
                os.chmod(d, 0o1777)
        elif "configMap" in vol:
            _fill(d, _config_map_files(vol["configMap"], configmaps, where))
        elif "projected" in vol:
            files: dict[str, str] = {}
            for src in (vol["projected"] or {}).get("sources") or []:
                if "serviceAccountToken" in src:
                    sat = src["serviceAccountToken"]
                    path = _safe_relative(sat.get("path", "token"), where)
                    ttl = int(sat.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
                    files[path] = mint(sat.get("audience") or "", ttl)
                elif "configMap" in src:
                    files.update(_config_map_files(src["configMap"], configmaps, where))
                else:
                    raise SpecError(f"{where}: projected sources supported: serviceAccountToken, "
                                    f"configMap (not {', '.join(src)})")
            _fill(d, files)
        else:
            kinds = ", ".join(k for k in vol if k != "name")
            raise SpecError(f"{where}: {kinds} volumes are not supported by the local cluster; "
                            "use emptyDir, configMap or projected")
        out[name] = d
    return out


def refresh_interval(pod_spec: dict[str, Any]) -> float:
    """How often the kubelet would rewrite the pod's volumes: tokens at half their lifetime,
    ConfigMap contents within a minute."""
    interval = 60.0
    for vol in pod_spec.get("volumes") or []:
        for src in ((vol.get("projected") or {}).get("sources") or []):
            if "serviceAccountToken" in src:
                ttl = int(src["serviceAccountToken"].get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
                interval = min(interval, ttl / 2)
    return interval


def _fill(d: Path, files: Mapping[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    for rel, text in files.items():
        _write(d / _safe_relative(rel, f"file {rel!r}"), text)


def mounts(container: dict[str, Any], dirs: Mapping[str, Path]) -> list[list]:
    """[[host source, mountPath, read only], ...] for one container."""
    out = []
    for m in container.get("volumeMounts") or []:
        name, path = m.get("name"), m.get("mountPath")
        if name not in dirs:
            raise SpecError(f"container {container.get('name')!r}: volumeMount {name!r} names no "
                            "volume of the pod")
        if not path or not os.path.isabs(path):
            raise SpecError(f"container {container.get('name')!r}: mountPath {path!r} must be absolute")
        src = dirs[name]
        if m.get("subPath"):
            src = src / _safe_relative(m["subPath"], f"subPath of {name!r}")
        out.append([str(src), path, bool(m.get("readOnly"))])
    return out


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
