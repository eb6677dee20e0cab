"""A very small kubelet: run a rendered Deployment's container, or read an injected pod's proxy
environment, on this host, the way the kubelet would prepare them.

What it does, and nothing more: each volume is written to a directory (Secret and ConfigMap
keys as files, a projected service-account token as the token given, emptyDir empty), paths in
args and env that lie under a mount point are rewritten to that directory, ``$(VAR)`` in args is
expanded from the container's env, and env ``fieldRef``s are resolved from the pod. The
container's ``command`` is run from the virtualenv (it is the image's console script).
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
Lookup = Callable[[str, str], Mapping[str, str] | None]  # (kind, name) -> data, for volumes


class PodFiles:
    """The volumes of one pod's container, written under ``root``."""

    def __init__(self, pod: Mapping[str, Any], container: Mapping[str, Any], root: Path,
                 lookup: Lookup, token: str = "") -> None:
        self.mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            d = root / m["name"]
            d.mkdir(parents=True, exist_ok=True)
            _fill(volumes[m["name"]], d, lookup, token)
            self.mounts[m["mountPath"]] = d

    def local(self, value: str) -> str:
        """``value`` with a path under a mount point rewritten to where the volume is here."""
        for mount, d in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount + "/"):
                return str(d) + value[len(mount):]
        return value


def _fill(volume: Mapping[str, Any], d: Path, lookup: Lookup, token: str) -> None:
    if "secret" in volume:
        _write(d, lookup("Secret", volume["secret"]["secretName"]), volume["secret"].get("items"), b64=True)
    elif "configMap" in volume:
        _write(d, lookup("ConfigMap", volume["configMap"]["name"]), volume["configMap"].get("items"))
    elif "projected" in volume:
        for source in volume["projected"]["sources"]:
            if "serviceAccountToken" in source:
                (d / source["serviceAccountToken"]["path"]).write_text(token)
            elif "configMap" in source:
                _write(d, lookup("ConfigMap", source["configMap"]["name"]), source["configMap"].get("items"))
    elif "emptyDir" not in volume:
        raise NotImplementedError(f"volume {volume['name']}: only secret, configMap, projected, emptyDir")


def _write(d: Path, data: Mapping[str, str] | None, items: list[dict[str, str]] | None, b64: bool = False) -> None:
    if data is None:
        raise FileNotFoundError(f"the object behind volume directory {d.name} does not exist")
    paths = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, path in paths.items():
        (d / path).write_bytes(base64.b64decode(data[key]) if b64 else data[key].encode())


def env_of(pod: Mapping[str, Any], container: Mapping[str, Any], files: PodFiles) -> dict[str, str]:
    """The container's environment as the kubelet resolves it (fieldRefs from the pod)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
              "status.podIP": status.get("podIP", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", "default")}
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = files.local(_expand(str(e["value"]), env))
        elif "fieldRef" in (e.get("valueFrom") or {}):
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def argv_of(container: Mapping[str, Any], env: Mapping[str, str], files: PodFiles) -> list[str]:
    command = [str(BIN / container["command"][0]), *container["command"][1:]]
    return command + [files.local(_expand(str(a), env)) for a in container.get("args") or []]


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def replace_flag(argv: list[str], flag: str, expected: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value (which must be ``expected``) set to ``value``."""
    i = argv.index(flag)
    assert argv[i + 1] == expected, f"{flag} is {argv[i + 1]!r}, expected {expected!r}"
    return [*argv[:i + 1], value, *argv[i + 2:]]
