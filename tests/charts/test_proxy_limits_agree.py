"""``mesh.proxyLimits``: the chart (values.yaml and its schema), the injector (mesh config) and
the proxy (its REMORA_* limits) agree, all from sidecar/http/limits.py's one table.

Property-based over each key: the chart's schema accepts a value exactly when the injector's
mesh config does, and an accepted value reaches the injected proxy as the same limit. The
chart renders proxyLimits into the mesh ConfigMap the injector reads. The commented defaults
in values.yaml are the generated ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_kit import render
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector import limitsvalues, meshconfig
from injector.template import inject_pod
from sidecar.http import limits

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "charts" / "remora" / "values.schema.json").read_text())
KEYS = sorted(limits.MESH_KEYS)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 100_000),
                   st.floats(-5, 100_000, allow_nan=False, allow_infinity=False),
                   st.sampled_from(["", "10", "1.5", "soon", "0"]), st.lists(st.integers(0, 3), max_size=2))


def chart_accepts(proxy_limits: Any) -> bool:
    return jsonschema.Draft7Validator(SCHEMA).is_valid({"mesh": {"proxyLimits": proxy_limits}})


def injector_reads(proxy_limits: Any) -> meshconfig.MeshConfig | None:
    try:
        return meshconfig.from_dict({"proxyLimits": proxy_limits})
    except ValueError:
        return None


def proxy_limits_of(mesh: meshconfig.MeshConfig) -> limits.Limits:
    """The limits a proxy injected with ``mesh`` runs with (its container's environment)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    out = inject_pod(pod, mesh)
    spec = out["spec"]
    proxy = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "remora-proxy")
    env = {e["name"]: e["value"] for e in proxy.get("env", []) if "value" in e}
    return limits.from_env(env)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_chart_and_injector_accept_alike_and_the_proxy_gets_the_value(key: str, value: Any) -> None:
    mesh = injector_reads({key: value})
    assert chart_accepts({key: value}) == (mesh is not None), (key, value)
    if mesh is not None:
        got = getattr(proxy_limits_of(mesh), limits.MESH_KEYS[key])
        assert got == value, (key, value, got)


def test_unknown_keys_and_non_mappings_are_refused_by_both() -> None:
    for bad in ({"maxHeaders": 5}, [1], "x", 5):
        assert not chart_accepts(bad) and injector_reads(bad) is None, bad
    for fine in (None, {}):
        assert chart_accepts(fine) and injector_reads(fine) is not None


def test_schema_defaults_are_the_proxys_defaults() -> None:
    props = SCHEMA["properties"]["mesh"]["properties"]["proxyLimits"]["properties"]
    defaults = limits.Limits()
    assert {k: p["default"] for k, p in props.items()} == {
        k: getattr(defaults, name) for k, name in limits.MESH_KEYS.items()}


def test_committed_values_yaml_has_the_generated_defaults() -> None:
    text = limitsvalues.VALUES_FILE.read_text()
    assert limitsvalues.render(text) == text, "run scripts/gen-values-schema"
    values = yaml.safe_load(text)
    assert values["mesh"]["proxyLimits"] == {}
    commented = {line.split(":")[0].strip(" #") for line in text.splitlines()
                 if line.startswith("  #   ")}
    assert commented == set(KEYS)


@pytest.mark.parametrize("given_limits", [{}, {"maxHeadersCount": 200, "requestHeadersTimeout": 2.5,
                                               "upstreamIdleTimeout": 0}])
def test_the_rendered_chart_hands_the_limits_to_the_proxy(given_limits: dict[str, Any]) -> None:
    objs = render({"mesh": {"proxyLimits": given_limits}})
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "remora-mesh")
    mesh = meshconfig.from_dict(yaml.safe_load(cm["data"]["mesh"]))
    got = proxy_limits_of(mesh)
    want = dataclasses.replace(limits.Limits(), **{limits.MESH_KEYS[k]: v for k, v in given_limits.items()})
    assert got == want
    if not given_limits:  # unset: nothing in the template hash changes for existing installs
        assert mesh.proxy_limits == ()
