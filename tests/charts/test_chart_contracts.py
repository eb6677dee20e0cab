"""What the chart renders fits the programs it runs: their flags, ports, paths and mesh config."""

from __future__ import annotations

import posixpath
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_kit import NAMESPACE, REPO, Rendered, render, selector_matches

from control_plane import __main__ as control_main
from control_plane.api.ports import DISCOVERY_PORT, MONITORING_PORT, PROXY_UID, WEBHOOK_PORT
from injector import __main__ as injector_main
from injector import meshconfig, template

SCRIPTS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def _pod_spec(chart: Rendered, name: str) -> dict[str, Any]:
    return chart.get("Deployment", name)["spec"]["template"]["spec"]


def _mounted_file(chart: Rendered, deployment: str, path: str) -> tuple[dict[str, Any], str]:
    """The volume that holds ``path`` in the deployment's container, and the file's key in it."""
    directory, key = posixpath.split(path)
    (mount,) = [m for m in chart.container(deployment)["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in _pod_spec(chart, deployment)["volumes"] if v["name"] == mount["name"]]
    return volume, key


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


def _service_target(chart: Rendered, service: str, port: int, deployment: str) -> int:
    """Follow a Service port to the container port of the deployment it selects."""
    svc = chart.get("Service", service)
    labels = chart.get("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    assert selector_matches({"matchLabels": svc["spec"]["selector"]}, labels)
    (entry,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    return _container_port(chart.container(deployment), entry["targetPort"])


def test_injector_flags_are_accepted_by_remora_injector(chart: Rendered) -> None:
    c = chart.container("remora-injector")
    assert c["command"] == ["remora-injector"]
    args = injector_main.parse_args(c["args"])
    assert args.no_webhook_config, "the chart renders the webhook configuration itself"
    assert (args.port, args.metrics_port) == (WEBHOOK_PORT, MONITORING_PORT)
    assert args.host == f"remora-injector.{NAMESPACE}.svc"
    webhook_secret = chart.values.get("injector", {}).get("webhook", {}).get("certSecret")
    for path, key in ((args.certfile, "tls.crt"), (args.keyfile, "tls.key")):
        volume, name = _mounted_file(chart, "remora-injector", path)
        assert name == key  # the keys of a kubernetes.io/tls Secret (cert-manager writes them)
        assert volume["secret"]["secretName"] == (webhook_secret or "remora-injector-tls")
    volume, name = _mounted_file(chart, "remora-injector", args.mesh_config)
    assert (volume["configMap"]["name"], name) == ("remora-mesh", meshconfig.CONFIGMAP_KEY)


def test_control_plane_flags_are_accepted_by_remora_control(chart: Rendered) -> None:
    c = chart.container("remora-control")
    assert c["command"] == ["remora-control"]
    assert "POD_IP" in {e["name"] for e in c["env"]}  # $(POD_IP) in args is expanded from it
    args = control_main.parse_args([a.replace("$(POD_IP)", "198.18.0.7") for a in c["args"]])
    mesh = yaml.safe_load(chart.get("ConfigMap", "remora-mesh")["data"]["mesh"])
    values = chart.values.get("mesh", {})
    assert args.source == "kube"
    assert (args.port, args.monitoring_port) == (DISCOVERY_PORT, MONITORING_PORT)
    assert args.monitoring_address == "0.0.0.0"  # probed by the kubelet from outside the pod
    assert args.trust_domain == mesh["trustDomain"]
    assert args.mesh_mtls_mode == values.get("mtlsMode", "PERMISSIVE")
    assert args.root_namespace == NAMESPACE
    assert args.serving_ip == ["198.18.0.7"]
    ca = chart.values.get("controlPlane", {}).get("ca", {})
    volume, _ = _mounted_file(chart, "remora-control", f"{args.ca_dir}/ca-key.pem")
    assert volume["secret"]["secretName"] == (ca.get("existingSecret") or "remora-ca")


def test_webhook_reaches_the_injector_handler(chart: Rendered) -> None:
    from injector.service import HANDLER_ID

    webhooks = chart.get("MutatingWebhookConfiguration", "remora-injector")["webhooks"]
    assert len(webhooks) == 4  # namespace, object, rev-namespace.default, rev-object.default
    for hook in webhooks:
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"]) == ("remora-injector", NAMESPACE)
        assert ref["path"] == f"/{HANDLER_ID}"  # kopf serves a handler at /<handler id>
        assert ref["port"] == 443
        assert _service_target(chart, "remora-injector", ref["port"], "remora-injector") == WEBHOOK_PORT


def test_proxies_reach_the_control_plane_service(chart: Rendered) -> None:
    mesh = meshconfig.from_dict(yaml.safe_load(chart.get("ConfigMap", "remora-mesh")["data"]["mesh"]))
    host, port = mesh.control_plane_address.rsplit(":", 1)
    assert host == f"remora-control.{NAMESPACE}.svc"
    assert _service_target(chart, "remora-control", int(port), "remora-control") == DISCOVERY_PORT
    assert _service_target(chart, "remora-control", MONITORING_PORT, "remora-control") == MONITORING_PORT


def test_probes_name_ports_the_container_declares(chart: Rendered) -> None:
    for name in ("remora-control", "remora-injector"):
        c = chart.container(name)
        for probe in ("readinessProbe", "livenessProbe"):
            action = c[probe].get("httpGet") or c[probe]["tcpSocket"]
            assert _container_port(c, action["port"]) in (DISCOVERY_PORT, MONITORING_PORT, WEBHOOK_PORT)
    assert chart.container("remora-control")["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_mesh_config_is_accepted_by_the_injector(chart: Rendered, tmp_path: Path) -> None:
    configmap = chart.get("ConfigMap", "remora-mesh")
    as_configmap = tmp_path / "configmap.yaml"
    as_configmap.write_text(yaml.safe_dump(configmap))
    as_mounted = tmp_path / meshconfig.CONFIGMAP_KEY  # what the injector reads in its pod
    as_mounted.write_text(configmap["data"]["mesh"])
    mesh = meshconfig.load(as_mounted)
    assert meshconfig.load(as_configmap) == mesh
    values = chart.values.get("mesh", {})
    assert mesh.trust_domain == values.get("trustDomain", "cluster.local")
    assert mesh.native_sidecar == values.get("nativeSidecar", True)
    assert mesh.log_level == values.get("logLevel", "info")
    assert mesh.drain_seconds == values.get("drainSeconds", 5)
    assert mesh.ipv6 == values.get("ipv6")
    want = values.get("proxyResources", {"requests": {"cpu": "100m", "memory": "64Mi"},
                                          "limits": {"cpu": "2", "memory": "256Mi"}})
    assert mesh.proxy_resources.as_k8s() == want


def test_injected_pods_run_the_chart_image_and_its_console_scripts(chart: Rendered) -> None:
    mesh = meshconfig.from_dict(yaml.safe_load(chart.get("ConfigMap", "remora-mesh")["data"]["mesh"]))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}
    injected = template.inject_pod(pod, mesh)
    added = [c for c in injected["spec"].get("initContainers", []) + injected["spec"]["containers"]
             if c["name"] != "web"]
    assert {c["name"] for c in added} == {"remora-init", "remora-proxy"}
    image = chart.container("remora-control")["image"]
    for c in added:
        assert c["image"] == image
        assert c["command"][0] in SCRIPTS
    for name in ("remora-control", "remora-injector"):
        assert chart.container(name)["command"][0] in SCRIPTS


def test_every_container_runs_non_root_on_a_read_only_root(chart: Rendered) -> None:
    for deployment in chart.all("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        writable = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]
                    if not m.get("readOnly")}
        assert writable == {"/tmp"}  # an emptyDir: tempfiles, generated serving keys
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == PROXY_UID
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}


def test_pdbs_select_their_deployments(chart: Rendered) -> None:
    deployments = chart.all("Deployment")
    for pdb in chart.all("PodDisruptionBudget"):
        selected = [d["metadata"]["name"] for d in deployments
                    if selector_matches(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert selected == [pdb["metadata"]["name"]]
        # maxUnavailable (not minAvailable: 1) so a single replica never blocks a node drain.
        assert pdb["spec"]["maxUnavailable"] >= 1
    assert len(chart.all("PodDisruptionBudget")) == len(deployments)
    for d in deployments:
        assert selector_matches(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])


def test_a_mesh_config_change_rolls_the_injector(default_chart: Rendered) -> None:
    def checksum(chart_objects: list[dict[str, Any]]) -> str:
        (d,) = [o for o in chart_objects if o["kind"] == "Deployment"
                and o["metadata"]["name"] == "remora-injector"]
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/mesh-config"]

    assert checksum(render({"mesh": {"logLevel": "debug"}})) != checksum(default_chart.objects)


@pytest.mark.parametrize("component", ["remora-control", "remora-injector"])
def test_replicas_spread_over_nodes_by_default(default_chart: Rendered, component: str) -> None:
    spec = _pod_spec(default_chart, component)
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    labels = default_chart.get("Deployment", component)["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(term["podAffinityTerm"]["labelSelector"], labels)
