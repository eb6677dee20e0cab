"""The chart's ``mesh`` values schema, generated from the settings' one source of truth.

Each mesh-wide default that a pod annotation overrides takes its schema (type, range, enum)
from that annotation's domain in ``control_plane.api.annotations``; the rest are described
here next to the mesh config that reads them. ``scripts/gen-values-schema`` writes the result
into charts/remora/values.schema.json; a test checks that the committed file is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from control_plane.api import annotations as ann
from control_plane.api import model
from injector import meshconfig
from sidecar.http import limits

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "charts" / "remora" / "values.schema.json"


def _quantity(domain: ann.Pattern) -> dict[str, Any]:
    # YAML may give a bare number (cpu: 2); the mesh config reads it as text.
    return {"type": ["string", "number"], "pattern": domain.pattern.pattern, "exclusiveMinimum": 0}


def _resources() -> dict[str, Any]:
    part = {"type": "object", "additionalProperties": False,
            "properties": {"cpu": _quantity(ann.CPU), "memory": _quantity(ann.MEMORY)}}
    return {"type": "object", "additionalProperties": False,
            "properties": {"requests": part, "limits": part}}


def mesh_schema() -> dict[str, Any]:
    """``properties.mesh``: chart value -> schema, in the order values.yaml lists them."""
    defaults = meshconfig.MeshConfig()
    own: dict[str, dict[str, Any]] = {
        "trustDomain": {"type": "string", "pattern": meshconfig.DNS_NAME.pattern},
        "ipv6": {"type": ["boolean", "null"]},
        "mtlsMode": {"enum": list(model.MTLS_MODES)},  # the control plane's, not the injector's
        "proxyResources": _resources(),
        "initResources": _resources(),
        "tracingEndpoint": {"type": "string", "pattern": r"^$|^https?://[^\s/]+(/\S*)?$"},
        "proxyLimits": limits.values_schema(),  # from sidecar/http/limits.py's SPEC
    }
    props: dict[str, Any] = {}
    for key in ("trustDomain", "nativeSidecar", "holdApplication", "rewriteProbes", "logLevel",
                "drainSeconds", "dnsCapture", "ipv6", "mtlsMode", "proxyResources",
                "initResources", "tracingEndpoint", "tracingSampling", "accessLog", "proxyLimits"):
        spec = ann.BY_MESH_KEY.get(key)
        if spec is None:
            props[key] = own[key]
            continue
        default = getattr(defaults, meshconfig.FIELDS[key])
        props[key] = {**spec.domain.schema(), "default": default,
                      "description": f"{spec.meaning}; per pod: annotation {spec.key}"}
    return {"type": "object", "additionalProperties": False, "properties": props}


def render(current: dict[str, Any]) -> str:
    """``current`` (the committed schema) with its mesh part regenerated, as file text."""
    current["properties"]["mesh"] = mesh_schema()
    return json.dumps(current, indent=2) + "\n"


def main() -> None:
    SCHEMA_FILE.write_text(render(json.loads(SCHEMA_FILE.read_text())))


if __name__ == "__main__":
    main()
