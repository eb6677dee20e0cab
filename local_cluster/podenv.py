"""What a container process gets: argv, environment (downward API filled in) and uid/gid.

Pure functions over the pod spec, as the kubelet computes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from local_cluster import config, images

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class SpecError(ValueError):
    """The container cannot be started as specified; the message names the field."""


@dataclass(frozen=True)
class PodFacts:
    """The runtime values the downward API exposes."""

    name: str
    namespace: str
    uid: str
    ip: str
    host_ip: str
    service_account: str
    node_name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def facts_of(pod: dict[str, Any], ip: str, host_ip: str, node_name: str) -> PodFacts:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    return PodFacts(
        name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""), ip=ip,
        host_ip=host_ip, service_account=spec.get("serviceAccountName") or "default",
        node_name=node_name, labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
    )


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is ``$``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def field_ref(path: str, facts: PodFacts) -> str:
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "status.podIP": facts.ip,
        "status.podIPs": facts.ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
        "spec.serviceAccountName": facts.service_account,
        "spec.nodeName": facts.node_name,
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        source = facts.labels if m.group(1) == "labels" else facts.annotations
        return str(source.get(m.group(2), ""))
    raise SpecError(f"fieldRef {path!r} is not supported; supported: {', '.join(simple)}, "
                    "metadata.labels['KEY'], metadata.annotations['KEY']")


def _config_map_value(ref: dict[str, Any], configmaps: Mapping[str, Mapping[str, str]], where: str) -> str | None:
    data = configmaps.get(ref.get("name", ""))
    if data is None or ref.get("key") not in data:
        if ref.get("optional"):
            return None
        raise SpecError(f"{where}: configMapKeyRef {ref.get('name')}/{ref.get('key')} not found; "
                        "apply the ConfigMap first")
    return str(data[ref["key"]])


def container_env(
    container: dict[str, Any], facts: PodFacts, configmaps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The full environment: the local cluster's base (PATH, PYTHONPATH...) then the spec's."""
    env = {
        "PATH": config.container_path(),
        "PYTHONPATH": str(config.REPO_ROOT),
        "HOME": "/",
        "HOSTNAME": facts.name,
        "LANG": "C.UTF-8",
        **images.version_env(container),  # the local cluster's stand-in for a proxy image
    }
    where = f"container {container.get('name')!r}"
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is None:
            raise SpecError(f"{where}: envFrom supports configMapRef only")
        data = configmaps.get(ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise SpecError(f"{where}: envFrom ConfigMap {ref.get('name')!r} not found")
        prefix = source.get("prefix", "")
        env.update({prefix + k: str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            raise SpecError(f"{where}: every env entry needs a name")
        if "valueFrom" in item:
            vf = item["valueFrom"] or {}
            if "fieldRef" in vf:
                env[name] = field_ref(vf["fieldRef"].get("fieldPath", ""), facts)
            elif "configMapKeyRef" in vf:
                value = _config_map_value(vf["configMapKeyRef"], configmaps, f"{where} env {name}")
                if value is not None:
                    env[name] = value
            else:
                raise SpecError(f"{where} env {name}: valueFrom supports fieldRef and "
                                "configMapKeyRef only (no secrets in the local cluster)")
        else:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def container_argv(container: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        raise SpecError(f"container {container.get('name')!r} has no command: the local cluster "
                        "ignores images; give command (and args)")
    return [expand(str(a), env) for a in argv]


def run_as(pod_spec: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
    """(uid, gid): the container's securityContext over the pod's; root when neither says."""
    pod_sc = pod_spec.get("securityContext") or {}
    c_sc = container.get("securityContext") or {}
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = c_sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if uid is None:
        uid = 0
    if gid is None:
        gid = uid  # images usually give a user its own group; root stays root
    for label, value in (("runAsUser", uid), ("runAsGroup", gid)):
        if not isinstance(value, int) or value < 0:
            raise SpecError(f"container {container.get('name')!r}: securityContext.{label} must "
                            f"be a whole number >= 0, not {value!r}")
    if (c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True) and uid == 0:
        raise SpecError(f"container {container.get('name')!r}: runAsNonRoot is true but the "
                        "container would run as uid 0; set runAsUser")
    return uid, gid


def resolve_port(container_ports: list[dict[str, Any]], port: Any, where: str) -> int:
    """A probe or Service targetPort: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container_ports:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise SpecError(f"{where}: port {port!r} is neither a number nor a named container port")
