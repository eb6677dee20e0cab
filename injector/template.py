"""The sidecar template: a pure function from a pod (and the mesh config) to the injected pod.

Shared by the webhook and ``remoractl inject``, so both produce the same containers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import jsonpatch

from control_plane.api import annotations as ann
from control_plane.api.ports import (
    CA_TOKEN_AUDIENCE,
    HEALTH_PORT,
    INBOUND_PORT,
    METRICS_PORT,
    OUTBOUND_PORT,
    PROXY_GID,
    PROXY_UID,
    TRUST_CONFIGMAP,
    TRUST_KEY,
)
from control_plane.api.version import version
from injector import probes, scrape
from injector.meshconfig import FIELDS, MeshConfig, Resources
from sidecar.http import limits

TEMPLATE_VERSION = "1"  # bump when the shape of what is injected changes
INIT_NAME = "remora-init"
PROXY_NAME = "remora-proxy"
WORKDIR_VOLUME, TOKEN_VOLUME, TRUST_VOLUME = "remora-workdir", "remora-token", "remora-trust"
WORKDIR = "/var/run/remora"
TOKEN_DIR = "/var/run/secrets/remora/tokens"
TOKEN_FILE = "remora-token"
TRUST_DIR = "/var/run/secrets/remora/trust"
TOKEN_EXPIRATION_SECONDS = 43200
WAIT_TIMEOUT_SECONDS = 60



def _effective(spec: ann.Annotation, mesh: MeshConfig, settings: dict[str, Any]) -> Any:
    """The pod's annotation, else the mesh-wide default, else None (the program's default)."""
    if spec.name in settings:
        return settings[spec.name]
    return getattr(mesh, FIELDS[spec.mesh_key]) if spec.mesh_key else None


def _passed_on(mesh: MeshConfig, settings: dict[str, Any], attr: str) -> list[tuple[str, str]]:
    """(flag or variable, text) for each annotation that becomes one (``attr``): init_flag or
    proxy_env. Unset ones are omitted so the program's own default applies."""
    out = []
    for spec in ann.ANNOTATIONS:
        target = getattr(spec, attr)
        value = _effective(spec, mesh, settings)
        if target and value is not None:
            out.append((target, spec.domain.text(value)))
    return out


def template_hash(mesh: MeshConfig) -> str:
    """Which template and mesh config produced an injection (compare to find stale pods)."""
    text = json.dumps({"template": TEMPLATE_VERSION, "mesh": mesh.as_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def version_info(mesh: MeshConfig) -> dict[str, str]:
    """What this injector stamps now: compared with each proxy's hello to find OUTDATED ones."""
    return {"component": "injector", "version": version(), "revision": mesh.revision,
            "proxyVersion": mesh.proxy_version, "templateHash": template_hash(mesh)}


def is_injected(pod: dict[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    return ann.STATUS_ANNOTATION in annotations or PROXY_NAME in names


def _effective_resources(mesh: Resources, settings: dict[str, Any]) -> Resources:
    res = Resources(
        cpu=settings.get("proxy-cpu", mesh.cpu),
        memory=settings.get("proxy-memory", mesh.memory),
        cpu_limit=settings.get("proxy-cpu-limit", mesh.cpu_limit),
        memory_limit=settings.get("proxy-memory-limit", mesh.memory_limit),
    )
    for kind in ("cpu", "memory"):
        request, limit = getattr(res, kind), getattr(res, f"{kind}_limit")
        culprit = f"proxy-{kind}" if f"proxy-{kind}" in settings else f"proxy-{kind}-limit"
        ann.check_request_within_limit(kind, request, limit, culprit)
    return res


def _init_container(image: str, mesh: MeshConfig, settings: dict[str, Any]) -> dict[str, Any]:
    args = [
        "--proxy-uid", str(PROXY_UID), "--proxy-gid", str(PROXY_GID),
        "--inbound-port", str(INBOUND_PORT), "--outbound-port", str(OUTBOUND_PORT),
    ]
    for flag, text in _passed_on(mesh, settings, "init_flag"):
        args += [flag, text]
    if mesh.ipv6 is not None:
        args.append("--ipv6" if mesh.ipv6 else "--no-ipv6")
    return {
        "name": INIT_NAME,
        "image": image,
        "imagePullPolicy": mesh.image_pull_policy,
        "command": [INIT_NAME, *args],
        "resources": mesh.init_resources.as_k8s(),
        # iptables needs root with NET_ADMIN/NET_RAW, and nothing more.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _proxy_env(mesh: MeshConfig, settings: dict[str, Any], app_probes: dict[str, Any]) -> list[dict[str, Any]]:
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    plain = {
        "REMORA_CONTROL_PLANE": mesh.control_plane_address,
        "REMORA_TRUST_DOMAIN": mesh.trust_domain,
        "REMORA_TOKEN_FILE": f"{TOKEN_DIR}/{TOKEN_FILE}",
        "REMORA_TRUST_ROOT": f"{TRUST_DIR}/{TRUST_KEY}",
        "REMORA_WORKDIR": WORKDIR,
        **dict(_passed_on(mesh, settings, "proxy_env")),
        # Reported in the discovery hello, so proxy-status can tell pods injected by an older
        # template (OUTDATED) without reading every pod.
        "REMORA_TEMPLATE_HASH": template_hash(mesh),
    }
    plain.update(limits.env_for(mesh.proxy_limits))  # HTTP limits set in mesh config
    plain["REMORA_APP_PROBES"] = json.dumps(app_probes, sort_keys=True, separators=(",", ":"))
    if settings.get("app-metrics"):  # set by inject_pod from the app's prometheus.io annotations
        plain[scrape.APP_METRICS_ENV] = settings["app-metrics"]
    if mesh.tracing_endpoint:  # tracing off: no endpoint, the proxy never loads the SDK
        plain["REMORA_TRACE_ENDPOINT"] = mesh.tracing_endpoint
    return env + [{"name": k, "value": v} for k, v in plain.items()]


def _health_probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _proxy_container(
    image: str, mesh: MeshConfig, settings: dict[str, Any], app_probes: dict[str, Any],
    native: bool, hold: bool,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": PROXY_NAME,
        "image": image,
        "imagePullPolicy": mesh.image_pull_policy,
        "command": [PROXY_NAME],
        "ports": [
            {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "env": _proxy_env(mesh, settings, app_probes),
        "resources": _effective_resources(mesh.proxy_resources, settings).as_k8s(),
        "readinessProbe": _health_probe(period=15, failures=4),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": WORKDIR_VOLUME, "mountPath": WORKDIR},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": True},
        ],
    }
    if native:
        # Kubernetes starts later containers only after this startup probe passes.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = _health_probe(period=1, failures=600)
    elif hold:
        container["lifecycle"] = {"postStart": {"exec": {
            "command": [PROXY_NAME, "wait", "--timeout", str(WAIT_TIMEOUT_SECONDS)]}}}
    return container


def _volumes() -> list[dict[str, Any]]:
    return [
        {"name": WORKDIR_VOLUME, "emptyDir": {"medium": "Memory"}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": CA_TOKEN_AUDIENCE,
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "path": TOKEN_FILE,
        }}]}},
        {"name": TRUST_VOLUME, "configMap": {
            "name": TRUST_CONFIGMAP, "items": [{"key": TRUST_KEY, "path": TRUST_KEY}]}},
    ]


def inject_pod(pod: dict[str, Any], mesh: MeshConfig) -> dict[str, Any]:
    """Return a copy of ``pod`` (or a pod template) with the sidecar injected.

    Idempotent: an already injected pod comes back unchanged. Raises ValueError (naming the
    annotation, the value and what is accepted) when an annotation is invalid.
    """
    pod = copy.deepcopy(pod)
    if is_injected(pod):
        return pod
    meta = pod.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    settings = ann.parse_annotations(annotations)
    both = sorted(set(settings.get("include-outbound-ports", ())) &
                  set(settings.get("exclude-outbound-ports", ())))
    if both:
        raise ValueError(
            f"annotations {ann.PREFIX}include-outbound-ports and {ann.PREFIX}exclude-outbound-ports "
            f"both list port {both[0]}; accepted: a port in at most one of them")
    spec = pod.setdefault("spec", {})
    apps = spec.get("containers") or []
    if not apps:
        raise ValueError("pod has no containers: nothing to inject a sidecar next to")

    annotations, settings["app-metrics"] = scrape.apply(annotations, settings)
    rewrite = settings.get("rewrite-probes", mesh.rewrite_probes)
    app_probes = probes.rewrite(apps) if rewrite else {}
    native = settings.get("native-sidecar", mesh.native_sidecar)
    hold = settings.get("hold-application", mesh.hold_application)
    image = settings.get("proxy-image", mesh.proxy_image)

    init = _init_container(image, mesh, settings)
    proxy = _proxy_container(image, mesh, settings, app_probes, native, hold)
    inits = spec.get("initContainers") or []
    if native:
        spec["initContainers"] = [init, proxy, *inits]
    else:
        spec["initContainers"] = [init, *inits]
        spec["containers"] = [proxy, *apps]
    taken = {v.get("name") for v in spec.get("volumes") or []}
    clash = taken & {WORKDIR_VOLUME, TOKEN_VOLUME, TRUST_VOLUME}
    if clash:
        raise ValueError(f"pod already has volume(s) {sorted(clash)} that Remora needs; rename them")
    volumes = _volumes()
    spec["volumes"] = [*(spec.get("volumes") or []), *volumes]

    annotations = dict(annotations)
    annotations.setdefault(ann.DEFAULT_CONTAINER_ANNOTATION, apps[0]["name"])
    annotations[ann.STATUS_ANNOTATION] = json.dumps({
        "initContainers": [c["name"] for c in (init, proxy) if c in spec["initContainers"]],
        "containers": [] if native else [PROXY_NAME],
        "volumes": [v["name"] for v in volumes],
        "proxyVersion": mesh.proxy_version,
        "templateHash": template_hash(mesh),
        "revision": mesh.revision,
        "appProbes": sorted(app_probes),
    }, sort_keys=True, separators=(",", ":"))
    meta["annotations"] = annotations
    return pod


def json_patch(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning ``old`` into ``new`` (what the webhook answers)."""
    return jsonpatch.JsonPatch.from_diff(old, new).patch
