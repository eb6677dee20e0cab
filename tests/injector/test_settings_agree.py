"""One source of truth: every program accepts exactly the annotation values the webhook accepts.

For each annotation (control_plane/api/annotations.py), property-based over its domain and
around it: the webhook (the injector's template, which ``remoractl inject`` shares), the proxy's
settings (the environment variable the injector sets), remora-init (the flag the injector
passes) and, for mesh-wide defaults, the chart's values schema and the mesh config all agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from control_plane.api import annotations as ann
from init_container.config import ConfigError, parse_invocation
from injector import meshconfig, valueschema
from injector.template import inject_pod
from sidecar import settings as proxy_settings

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "charts" / "remora" / "values.schema.json").read_text())
PASSED_ON = [a for a in ann.ANNOTATIONS if a.proxy_env or a.init_flag or a.mesh_key]

# Text near each domain: valid forms and their near misses, plus arbitrary text.
NEAR = st.sampled_from([
    "", "*", "0", "1", "5", "2.5", "3600", "3600.5", "3601", "-1", "1e3", "0x10", " 5", "5\n",
    "true", "false", "True", "yes", "1", "on", "trace", "debug", "DEBUG", "info", "verbose",
    "80", "80,443", "80,,443", "65536", "1-1024", "8080, 9090", "198.18.0.0/15", "fd00::/8",
    "10.0.0.0/33", "example.com", "٣", "0.000001", "0.0000001",
])
TEXT = st.one_of(NEAR, st.text(max_size=12), st.from_regex(r"[0-9.,*]{1,8}", fullmatch=True))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10_000),
                   st.floats(-10, 10_000, allow_nan=False, allow_infinity=False), TEXT)


def _pod(key: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "annotations": {key: value}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def webhook_accepts(spec: ann.Annotation, text: str) -> bool:
    try:
        inject_pod(_pod(spec.key, text), meshconfig.MeshConfig())
    except ValueError:
        return False
    return True


class _NoFlags:
    def __getattr__(self, name: str) -> None:
        return None


def proxy_reads(spec: ann.Annotation, text: str) -> Any:
    """What the proxy makes of the variable; raises SettingsError when it refuses it."""
    assert spec.proxy_env
    s = proxy_settings.load({"REMORA_BOOTSTRAP": "b.json", spec.proxy_env: text}, _NoFlags())
    return getattr(s, spec.name.replace("-", "_"))


def init_accepts(spec: ann.Annotation, text: str) -> bool:
    assert spec.init_flag
    try:
        parse_invocation([spec.init_flag, text], {})
    except ConfigError:
        return False
    return True


def chart_accepts(key: str, value: Any) -> bool:
    return jsonschema.Draft7Validator(SCHEMA).is_valid({"mesh": {key: value}})


def mesh_accepts(key: str, value: Any) -> bool:
    try:
        meshconfig.from_dict({key: value})
    except meshconfig.MeshConfigError:
        return False
    return True


@pytest.mark.parametrize("spec", PASSED_ON, ids=lambda a: a.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
@example(text="trace")
def test_annotation_text_is_accepted_alike_everywhere(spec: ann.Annotation, text: str) -> None:
    accepted = webhook_accepts(spec, text)
    if spec.proxy_env and text:  # an empty variable is an unset one for the proxy
        try:
            got = proxy_reads(spec, text)
        except proxy_settings.SettingsError:
            assert not accepted, f"the webhook lets {text!r} through, the proxy refuses it"
        else:
            assert accepted, f"the proxy takes {text!r}, the webhook refuses it"
            assert got == spec.domain.parse(text)
    if spec.init_flag:
        assert init_accepts(spec, text) == accepted, text
    if spec.mesh_key and accepted:  # the same value as a mesh-wide default in the chart
        typed = spec.domain.parse(text)
        assert chart_accepts(spec.mesh_key, typed) and mesh_accepts(spec.mesh_key, typed)


@pytest.mark.parametrize("spec", [a for a in ann.ANNOTATIONS if a.mesh_key],
                         ids=lambda a: a.mesh_key or "")
@settings(max_examples=150, deadline=None)
@given(value=VALUES)
def test_mesh_values_are_accepted_alike_and_reach_the_proxy(spec: ann.Annotation,
                                                            value: Any) -> None:
    assert spec.mesh_key
    accepted = mesh_accepts(spec.mesh_key, value)
    assert chart_accepts(spec.mesh_key, value) == accepted, value
    if not accepted:
        return
    # The injector passes the mesh default on as text; the pod annotation takes the same text.
    text = spec.domain.text(value)
    assert webhook_accepts(spec, text), text
    if spec.proxy_env:
        got = proxy_reads(spec, text)
        assert got == value or math.isclose(got, value, abs_tol=1e-6)


def test_trace_is_a_log_level_of_every_program() -> None:
    spec = ann.BY_NAME["log-level"]
    assert webhook_accepts(spec, "trace") and proxy_reads(spec, "trace") == "trace"
    assert chart_accepts("logLevel", "trace") and mesh_accepts("logLevel", "trace")
    assert proxy_settings.python_log_level("trace") < proxy_settings.python_log_level("debug")


def test_committed_values_schema_is_the_generated_one() -> None:
    committed = (REPO / "charts" / "remora" / "values.schema.json").read_text()
    assert valueschema.render(json.loads(committed)) == committed, "run scripts/gen-values-schema"
