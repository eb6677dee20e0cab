"""Tracing and access-log settings: mesh config, per-pod annotations, the proxy's environment."""

from __future__ import annotations

import argparse

import pytest

from injector import meshconfig
from injector.template import inject_pod
from sidecar.settings import SettingsError, load

ENDPOINT = "http://otel-collector.observability:4318/v1/traces"


def proxy_env(annotations: dict[str, str], mesh: meshconfig.MeshConfig) -> dict[str, str]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "demo", "annotations": annotations},
           "spec": {"containers": [{"name": "app", "image": "a:1"}]}}
    spec = inject_pod(pod, mesh)["spec"]
    (proxy,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == "remora-proxy"]
    return {e["name"]: e.get("value") for e in proxy["env"]}


def test_mesh_defaults_and_per_pod_overrides_reach_the_proxy() -> None:
    off = proxy_env({}, meshconfig.MeshConfig())
    # Tracing is off without an endpoint; the defaults travel as the annotations' own values.
    assert "REMORA_TRACE_ENDPOINT" not in off
    assert (off["REMORA_TRACE_SAMPLING"], off["REMORA_ACCESS_LOG"]) == ("1", "off")
    mesh = meshconfig.from_dict({"tracingEndpoint": ENDPOINT, "tracingSampling": 2.5,
                                 "accessLog": "text"})
    env = proxy_env({}, mesh)
    assert (env["REMORA_TRACE_ENDPOINT"], env["REMORA_TRACE_SAMPLING"], env["REMORA_ACCESS_LOG"]) == (
        ENDPOINT, "2.5", "text")
    env = proxy_env({"remora.dev/trace-sampling": "50", "remora.dev/access-log": "off"}, mesh)
    assert (env["REMORA_TRACE_SAMPLING"], env["REMORA_ACCESS_LOG"]) == ("50", "off")
    assert proxy_env({"remora.dev/access-log": "json"}, meshconfig.MeshConfig())[
        "REMORA_ACCESS_LOG"] == "json"


@pytest.mark.parametrize(("key", "value", "says"), [
    ("tracingEndpoint", "collector:4318", "tracingEndpoint"),
    ("tracingSampling", 150, "tracingSampling"),
    ("tracingSampling", True, "tracingSampling"),
    ("accessLog", "JSON", "accessLog"),
])
def test_bad_mesh_values_are_named(key: str, value, says: str) -> None:
    with pytest.raises(meshconfig.MeshConfigError, match=says):
        meshconfig.from_dict({key: value})


@pytest.mark.parametrize(("var", "value"), [
    ("REMORA_ACCESS_LOG", "yes"), ("REMORA_TRACE_SAMPLING", "200"),
    ("REMORA_TRACE_ENDPOINT", "collector:4318"), ("REMORA_APP_METRICS", "http://10.1.1.1:9/m"),
])
def test_bad_proxy_environment_is_named(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        load({"REMORA_CONTROL_PLANE": "cp:15012", var: value}, argparse.Namespace())
