"""Render charts/remora offline (helm-python-sdk) and look things up in what it rendered."""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "remora"
RELEASE, NAMESPACE = "remora", "remora-system"

# Non-default values: custom image, two replicas of each, failurePolicy Ignore, STRICT mTLS,
# the operator's own CA Secret (with an intermediate) and a cert-manager webhook certificate.
CUSTOM_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example/mesh/remora", "tag": "0.2.0-rc1", "pullPolicy": "Always"},
    "mesh": {
        "trustDomain": "prod.example", "nativeSidecar": False, "logLevel": "debug",
        "drainSeconds": 30, "mtlsMode": "STRICT", "ipv6": True,
        "proxyResources": {"requests": {"cpu": "200m", "memory": "128Mi"},
                           "limits": {"cpu": "1", "memory": "512Mi"}},
    },
    "controlPlane": {"replicas": 2, "certTTL": "12h", "logLevel": "debug",
                     "ca": {"existingSecret": "remora-cacerts"}},
    "injector": {
        "replicas": 2, "failurePolicy": "Ignore", "timeoutSeconds": 5,
        "webhook": {"certSecret": "remora-injector-certs",
                    "certManagerCertificate": "remora-system/remora-injector"},
    },
}


class RenderError(Exception):
    """The chart refused the values (a template `fail`)."""


def render(values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE,
           release: str = RELEASE) -> list[dict[str, Any]]:
    """Every object the chart renders, in template order (NOTES.txt is not an object)."""
    with helm.Chart.load(str(CHART)) as chart:
        try:
            manifests = chart.render(dict(values or {}), name=release, namespace=namespace)
        except helm.HelmError as e:
            raise RenderError(str(e)) from None
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    values: dict[str, Any]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def container(self, deployment: str) -> dict[str, Any]:
        (c,) = self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        return c


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector, evaluated as the API server does (None/{} selects all)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def secret_files(secret: Mapping[str, Any], directory: Path) -> Path:
    """Write a Secret's data as the kubelet mounts it: one file per key."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in secret["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


@contextlib.contextmanager
def tls_pair(server: ssl.SSLContext, client: ssl.SSLContext,
             server_hostname: str | None = None) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """A completed TLS handshake over a socketpair: (server side, client side)."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    result: dict[str, Any] = {}

    def accept() -> None:
        try:
            result["server"] = server.wrap_socket(a, server_side=True)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        client_sock = client.wrap_socket(b, server_hostname=server_hostname)
        t.join(5)
        if "error" in result:
            raise result["error"]
        try:
            yield result["server"], client_sock
        finally:
            client_sock.close()
            result["server"].close()
    finally:
        b.close()  # a failed client handshake must not leave the server side waiting
        t.join(5)
        a.close()
