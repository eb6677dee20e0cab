"""``remoractl inject -f``: manual injection gives what the webhook gives, for every workload kind."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import injector_pods as pods
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from injector_harness import BIN, Webhook, decode_patch
from kubernetes_validate import utils as kv_utils

from injector.workloads import POD_PATHS

REMORACTL = str(BIN / "remoractl")
UNRELATED = """\
# settings that must come out byte for byte
apiVersion: v1
kind: ConfigMap
metadata: {name: reviews-config, namespace: shop}   # flow style and comments kept
data:
  LOG_LEVEL: "info"
"""


def deployment() -> dict[str, Any]:
    pod = pods.deployment_pod()
    template = {"metadata": {"labels": {k: v for k, v in pod["metadata"]["labels"].items()
                                        if k != "pod-template-hash"}},
                "spec": pod["spec"]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "reviews-v1", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "reviews", "version": "v1"}},
                     "template": template}}


def pod_from(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod a controller would create from the Deployment's template."""
    template = copy.deepcopy(workload["spec"]["template"])
    meta = {**template["metadata"], "generateName": "reviews-v1-7c9d8b5f4-", "namespace": "shop"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def remoractl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REMORACTL, *args], input=stdin, capture_output=True, text=True,
                          timeout=30)


def test_inject_matches_the_webhook(standalone_webhook: Webhook, tmp_path: Path) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(UNRELATED + "---\n" + yaml.safe_dump(deployment(), sort_keys=False))
    result = remoractl("inject", "-f", str(source))
    assert result.returncode == 0, result.stderr
    config_map, injected = result.stdout.split("---\n")
    assert config_map == UNRELATED  # untouched, comments and all
    manual = yaml.safe_load(injected)["spec"]["template"]

    pod = pod_from(deployment())
    webhook = jsonpatch.apply_patch(pod, decode_patch(standalone_webhook.review(
        pods.admission_review(pod))))
    for key in ("initContainers", "containers", "volumes"):
        assert manual["spec"][key] == webhook["spec"][key], key
    assert manual["metadata"]["annotations"] == webhook["metadata"]["annotations"]


WORKLOADS = {
    "Pod": lambda spec: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec},
    "Deployment": lambda spec: _controller("apps/v1", "Deployment", spec),
    "StatefulSet": lambda spec: _controller("apps/v1", "StatefulSet", spec, serviceName="db"),
    "DaemonSet": lambda spec: _controller("apps/v1", "DaemonSet", spec),
    "ReplicaSet": lambda spec: _controller("apps/v1", "ReplicaSet", spec),
    "Job": lambda spec: {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                         "spec": {"template": {"spec": {**spec, "restartPolicy": "Never"}}}},
    "CronJob": lambda spec: {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                             "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {
                                 "template": {"spec": {**spec, "restartPolicy": "OnFailure"}}}}}},
}


def _controller(api: str, kind: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": kind.lower()},
            "spec": {**extra, "selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}}, "spec": spec}}}


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    for key in POD_PATHS[obj["kind"]]:
        obj = obj[key]
    return obj


def test_every_workload_kind_in_one_stream_via_stdin() -> None:
    assert set(WORKLOADS) == set(POD_PATHS)
    spec = {"containers": [{"name": "app", "image": "example/app:1"}]}
    docs = [make(copy.deepcopy(spec)) for make in WORKLOADS.values()]
    stream = UNRELATED + "".join("---\n" + yaml.safe_dump(d) for d in docs)
    result = remoractl("inject", "-f", "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    assert out[0] == yaml.safe_load(UNRELATED)
    version = kv_utils.latest_version()
    for obj in out[1:]:
        names = [c["name"] for c in _template(obj)["spec"]["initContainers"]]
        assert names == ["remora-init", "remora-proxy"], obj["kind"]
        kubernetes_validate.validate(obj, version, strict=True)
    again = remoractl("inject", "-f", "-", stdin=result.stdout)
    assert again.stdout == result.stdout  # re-injection changes nothing


def test_list_items_and_opt_outs() -> None:
    opted_out = WORKLOADS["Pod"]({"containers": [{"name": "app", "image": "a:1"}]})
    opted_out["metadata"]["labels"] = {"remora.dev/inject": "false"}
    wanted = WORKLOADS["Pod"]({"containers": [{"name": "app", "image": "a:1"}]})
    stream = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [opted_out, wanted]})
    result = remoractl("inject", "-f", "-", stdin=stream)
    assert result.returncode == 0, result.stderr
    items = yaml.safe_load(result.stdout)["items"]
    assert "initContainers" not in items[0]["spec"]
    assert [c["name"] for c in items[1]["spec"]["initContainers"]][0] == "remora-init"
    assert "item 0: not injected (pod-disabled)" in result.stderr


@pytest.mark.parametrize(("annotations", "expected"), [
    ({"remora.dev/log-level": "loud"}, "annotation remora.dev/log-level: invalid value 'loud'"),
    ({"remora.dev/drain-seconds": "-1"}, "annotation remora.dev/drain-seconds: invalid value '-1'"),
])
def test_bad_annotation_fails_naming_the_document(annotations: dict[str, str], expected: str) -> None:
    pod = WORKLOADS["Pod"]({"containers": [{"name": "app", "image": "a:1"}]})
    pod["metadata"]["annotations"] = annotations
    result = remoractl("inject", "-f", "-", stdin=UNRELATED + "---\n" + yaml.safe_dump(pod))
    assert result.returncode == 1 and result.stdout == ""
    assert "stdin document 2:" in result.stderr and expected in result.stderr


def test_mesh_config_is_used_and_checked(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": "remora-mesh"},
                                    "data": {"mesh": "nativeSidecar: false\nproxyImage: r.example/remora:9\n"}}))
    pod = yaml.safe_dump(WORKLOADS["Pod"]({"containers": [{"name": "app", "image": "a:1"}]}))
    result = remoractl("inject", "-f", "-", "--mesh-config", str(mesh), stdin=pod)
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load(result.stdout)["spec"]
    assert [c["name"] for c in spec["containers"]] == ["remora-proxy", "app"]
    assert spec["containers"][0]["image"] == "r.example/remora:9"
    mesh.write_text("nativeSidecars: true\n")
    result = remoractl("inject", "-f", "-", "--mesh-config", str(mesh), stdin=pod)
    assert result.returncode == 1 and "unknown key(s) nativeSidecars" in result.stderr
