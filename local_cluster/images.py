"""The local cluster runs every container from this checkout and ignores images, except for one
fact an image carries that Remora observes: the proxy's release. An injected Remora container
(``remora-proxy``, ``remora-init``) whose image has a tag runs with that tag as its version
(``REMORA_VERSION_OVERRIDE``), so a revision injecting ``remora:0.2.0`` yields proxies that say
0.2.0, as a new image would on Kubernetes."""

from __future__ import annotations

from typing import Any

from control_plane.api.version import OVERRIDE_ENV

REMORA_CONTAINERS = ("remora-proxy", "remora-init")


def image_tag(image: str) -> str | None:
    name = image.rsplit("/", 1)[-1].split("@", 1)[0]
    return name.split(":", 1)[1] if ":" in name else None


def version_env(container: dict[str, Any]) -> dict[str, str]:
    if container.get("name") not in REMORA_CONTAINERS:
        return {}
    tag = image_tag(str(container.get("image") or ""))
    return {OVERRIDE_ENV: tag} if tag and tag != "latest" else {}
