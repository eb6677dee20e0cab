"""Pure logic of the local cluster: manifests, VIPs, hosts, DNAT rules, env, uids, volumes."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from control_plane.api import tokens
from local_cluster import admission, manifests, podenv, services, volumes
from local_cluster.manifests import ManifestError
from local_cluster.podenv import SpecError

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1}
spec:
  replicas: 3
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec:
      containers: [{name: app, command: [python3, -m, examples.app.reviews]}]
"""


def test_deployment_becomes_its_replicas() -> None:
    (dep,) = manifests.load_text(DEPLOYMENT, "d.yaml", "demo")
    pods = manifests.deployment_pods(dep)
    assert len(pods) == 3
    names = [p["metadata"]["name"] for p in pods]
    h = pods[0]["metadata"]["labels"]["pod-template-hash"]
    assert names == [f"reviews-v1-{h}-{i}" for i in range(3)]
    for p in pods:
        assert p["metadata"]["namespace"] == "demo"
        assert p["metadata"]["labels"]["version"] == "v1"
        assert manifests.owner(p) == "reviews-v1"
        assert p["spec"]["containers"][0]["command"][-1] == "examples.app.reviews"


def test_changed_template_gives_new_pod_names() -> None:
    (dep,) = manifests.load_text(DEPLOYMENT, "d.yaml", "demo")
    before = {p["metadata"]["name"] for p in manifests.deployment_pods(dep)}
    dep["spec"]["template"]["spec"]["containers"][0]["command"].append("--slow")
    after = {p["metadata"]["name"] for p in manifests.deployment_pods(dep)}
    assert before.isdisjoint(after)
    dep["spec"]["replicas"] = 0
    assert manifests.deployment_pods(dep) == []


@pytest.mark.parametrize(("text", "message"), [
    ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n", "v1 Secret is not supported"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n",
     "container 'c' has no command"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: []}\n",
     "not a DNS-1123 label"),
    ("kind: Pod\n", "apiVersion and kind are required"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_manifests_are_named(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match="x.yaml") as e:
        manifests.load_text(text, "x.yaml", "default")
    assert message in str(e.value)


def test_apply_order_puts_dependencies_first() -> None:
    objs = [{"kind": k} for k in ("Deployment", "Pod", "Service", "Namespace", "ServiceAccount")]
    assert [o["kind"] for o in manifests.sort_for_apply(objs)] == [
        "Namespace", "ServiceAccount", "Service", "Pod", "Deployment"]


def test_vips_are_allocated_kept_and_released() -> None:
    vips = services.VipAllocator()
    a = vips.allocate("demo", "web")
    b = vips.allocate("demo", "catalog")
    assert (a, b) == ("198.19.0.10", "198.19.0.11")
    assert vips.allocate("demo", "web") == a
    assert vips.allocate("demo", "fixed", "198.19.3.4") == "198.19.3.4"
    with pytest.raises(services.VipError, match="already used by demo/web"):
        vips.allocate("other", "x", a)
    with pytest.raises(services.VipError, match="outside the service range"):
        vips.allocate("demo", "y", "198.18.0.5")
    vips.release("demo", "web")
    assert vips.allocate("demo", "again") == a


def test_short_service_names_resolve_in_their_own_namespace_only() -> None:
    svcs = [{"metadata": {"name": "reviews", "namespace": "demo"}, "spec": {"clusterIP": "198.19.0.10"}},
            {"metadata": {"name": "db", "namespace": "data"}, "spec": {"clusterIP": "198.19.0.11"}},
            {"metadata": {"name": "headless", "namespace": "demo"}, "spec": {"clusterIP": "None"}}]
    hosts = services.host_entries(svcs, "demo")
    assert hosts["reviews"] == hosts["reviews.demo"] == "198.19.0.10"
    assert hosts["reviews.demo.svc.cluster.local"] == "198.19.0.10"
    assert "db" not in hosts and hosts["db.data"] == "198.19.0.11"
    assert not any(name.startswith("headless") for name in hosts)


def test_dnat_rules_spread_over_endpoints() -> None:
    eps = [services.Endpoint(f"198.18.0.{i}", 9080) for i in (10, 11, 12)]
    rules = services.dnat_rules({("198.19.0.10", 80): eps}).splitlines()
    dnat = [r for r in rules if "-j DNAT" in r]
    assert "--probability 0.33333" in dnat[0] and "--probability 0.50000" in dnat[1]
    assert "statistic" not in dnat[2] and dnat[2].endswith("198.18.0.12:9080")
    assert "-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE" in rules
    assert rules[-1] == "COMMIT"


FACTS = podenv.PodFacts(name="web-0", namespace="demo", uid="u-1", ip="198.18.0.12",
                        host_ip="198.18.0.1", service_account="web", node_name="n",
                        labels={"app": "web"}, annotations={})


def test_env_fills_the_downward_api_and_expands_references() -> None:
    container = {"name": "app", "command": ["echo", "$(POD_NAME)", "$$(POD_NAME)"], "env": [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "URL", "value": "http://$(POD_IP):8080/$(UNDEFINED)"},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
    ]}
    env = podenv.container_env(container, FACTS, {"cfg": {"mode": "fast"}})
    assert env["POD_NAME"] == "web-0" and env["POD_IP"] == "198.18.0.12"
    assert env["SA"] == "web" and env["NODE"] == "198.18.0.1" and env["APP"] == "web"
    assert env["URL"] == "http://198.18.0.12:8080/$(UNDEFINED)"
    assert env["MODE"] == "fast"
    assert env["PATH"].split(":")[0].endswith("bin") and env["PYTHONPATH"]
    assert podenv.container_argv(container, env) == ["echo", "web-0", "$(POD_NAME)"]


def test_env_errors_name_the_field() -> None:
    bad = {"name": "app", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}
    with pytest.raises(SpecError, match="fieldRef 'spec.nope' is not supported"):
        podenv.container_env(bad, FACTS, {})
    missing = {"name": "app", "env": [{"name": "X", "valueFrom": {
        "configMapKeyRef": {"name": "cfg", "key": "k"}}}]}
    with pytest.raises(SpecError, match="configMapKeyRef cfg/k not found"):
        podenv.container_env(missing, FACTS, {})


def test_uid_comes_from_the_container_over_the_pod() -> None:
    pod = {"securityContext": {"runAsUser": 1000}}
    assert podenv.run_as(pod, {"name": "a"}) == (1000, 1000)
    assert podenv.run_as(pod, {"name": "a", "securityContext": {"runAsUser": 1337, "runAsGroup": 7}}) == (1337, 7)
    assert podenv.run_as({}, {"name": "a"}) == (0, 0)
    with pytest.raises(SpecError, match="runAsNonRoot"):
        podenv.run_as({"securityContext": {"runAsNonRoot": True}}, {"name": "a"})


def test_volume_layout(tmp_path: Path) -> None:
    spec = {
        "containers": [
            {"name": "app", "volumeMounts": [{"name": "work", "mountPath": "/var/run/remora"},
                                              {"name": "cfg", "mountPath": "/etc/app/mode",
                                               "subPath": "mode"}]},
            {"name": "proxy", "volumeMounts": [
                {"name": "token", "mountPath": "/var/run/secrets/remora/tokens", "readOnly": True}]},
        ],
        "volumes": [
            {"name": "work", "emptyDir": {"medium": "Memory"}},
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "m", "path": "mode"}]}},
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "remora-ca", "expirationSeconds": 600, "path": "remora-token"}}]}},
        ],
    }
    key = os.urandom(32).hex().encode()

    def mint(aud: str, ttl: int) -> str:
        return tokens.mint(key, namespace="demo", service_account="web", pod="web-0",
                           audience=aud, ttl=ttl)

    dirs = volumes.prepare(spec, tmp_path, {"cfg": {"m": "fast"}}, mint,
                           {"app": (1000, 1000), "proxy": (1337, 1337)})
    work = dirs["work"].stat()
    assert (work.st_uid, work.st_gid) == (1000, 1000)
    assert (dirs["cfg"] / "mode").read_text() == "fast"
    claims = tokens.verify(key, (dirs["token"] / "remora-token").read_text())
    assert (claims.namespace, claims.service_account, claims.pod) == ("demo", "web", "web-0")
    assert volumes.mounts(spec["containers"][0], dirs) == [
        [str(dirs["work"]), "/var/run/remora", False],
        [str(dirs["cfg"] / "mode"), "/etc/app/mode", False]]
    assert volumes.mounts(spec["containers"][1], dirs)[0][2] is True
    assert volumes.refresh_interval(spec) == 60  # ConfigMaps within a minute
    spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] = 100
    assert volumes.refresh_interval(spec) == 50  # tokens at half their lifetime


def test_host_paths_and_secrets_are_refused(tmp_path: Path) -> None:
    for vol in ({"name": "h", "hostPath": {"path": "/etc"}}, {"name": "s", "secret": {"secretName": "x"}}):
        with pytest.raises(SpecError, match="not supported by the local cluster"):
            volumes.prepare({"containers": [], "volumes": [vol]}, tmp_path, {}, lambda a, t: "", {})


def test_webhook_selection_follows_the_labels() -> None:
    pod = {"metadata": {"labels": {}}}
    assert admission.selected(pod, {"remora.dev/inject": "enabled"})
    assert not admission.selected(pod, {})
    assert admission.selected({"metadata": {"labels": {"remora.dev/inject": "true"}}}, {})


def test_admission_response_is_applied_as_json_patch() -> None:
    pod = {"metadata": {"name": "p", "namespace": "demo"}, "spec": {"containers": [{"name": "a"}]}}
    review = admission.review_request(pod)
    assert review["request"]["operation"] == "CREATE"
    assert review["request"]["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    ops = [{"op": "add", "path": "/spec/initContainers", "value": [{"name": "remora-proxy"}]}]
    answer = {"response": {"uid": review["request"]["uid"], "allowed": True, "patchType": "JSONPatch",
                           "patch": base64.b64encode(json.dumps(ops).encode()).decode()}}
    patched, _ = admission.apply_response(pod, review, answer)
    assert patched["spec"]["initContainers"] == [{"name": "remora-proxy"}]
    denied = {"response": {"uid": review["request"]["uid"], "allowed": False,
                           "status": {"message": "annotation remora.dev/x: bad"}}}
    with pytest.raises(admission.AdmissionDenied, match="remora.dev/x: bad"):
        admission.apply_response(pod, review, denied)


def test_the_proxy_runs_as_the_version_it_was_stamped_with() -> None:
    from local_cluster import pods

    pod = {"metadata": {"annotations": {"remora.dev/status": json.dumps({"proxyVersion": "0.1.1"})}}}
    assert pods.image_env(pod, "remora-proxy") == {"REMORA_VERSION_OVERRIDE": "0.1.1"}
    assert pods.image_env(pod, "app") == {}
    assert pods.image_env({"metadata": {"annotations": {"remora.dev/status": "{"}}}, "remora-proxy") == {}
