"""Realistic pods as the API server hands them to a mutating webhook, and their reviews."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from control_plane.api.annotations import ANNOTATIONS, PREFIX


def _kube_api_access(suffix: str) -> dict[str, Any]:
    # What the ServiceAccount admission plugin adds to every pod before webhooks run.
    return {"name": f"kube-api-access-{suffix}", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def _sa_mount(suffix: str) -> dict[str, Any]:
    return {"name": f"kube-api-access-{suffix}", "readOnly": True,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}


_POD_DEFAULTS: dict[str, Any] = {
    "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
    "priority": 0, "schedulerName": "default-scheduler", "securityContext": {},
    "terminationGracePeriodSeconds": 30,
    "tolerations": [
        {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists",
         "tolerationSeconds": 300},
        {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists",
         "tolerationSeconds": 300},
    ],
}


def _container_defaults(c: dict[str, Any]) -> dict[str, Any]:
    return {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", **c}


def deployment_pod() -> dict[str, Any]:
    """A Deployment's pod: two containers, HTTP/TCP/gRPC/exec probes, named ports."""
    reviews = _container_defaults({
        "name": "reviews", "image": "docker.io/example/reviews:1.20.1",
        "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
        "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"},
                           "initialDelaySeconds": 2, "periodSeconds": 5, "timeoutSeconds": 2,
                           "successThreshold": 1, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": 9080}, "periodSeconds": 10, "timeoutSeconds": 1,
                          "successThreshold": 1, "failureThreshold": 3},
        "startupProbe": {"grpc": {"port": 9090, "service": "reviews"}, "periodSeconds": 2,
                         "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 30},
        "volumeMounts": [{"name": "logs", "mountPath": "/tmp/logs"}, _sa_mount("x7k2p")],
    })
    shipper = _container_defaults({
        "name": "log-shipper", "image": "docker.io/fluent/fluent-bit:3.1.4",
        "ports": [{"name": "http-monitor", "containerPort": 2020, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/api/v1/health", "port": 2020, "scheme": "HTTP",
                                      "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]},
                          "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                          "failureThreshold": 3},
        "readinessProbe": {"exec": {"command": ["/fluent-bit/bin/check"]}, "periodSeconds": 10,
                           "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "volumeMounts": [{"name": "logs", "mountPath": "/logs", "readOnly": True}, _sa_mount("x7k2p")],
    })
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-7c9d8b5f4-", "namespace": "shop",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7c9d8b5f4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "reviews-v1-7c9d8b5f4", "uid": "9a1c1b0e-4c1e-4bb4-9d6a-0f1a2b3c4d5e",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {**copy.deepcopy(_POD_DEFAULTS), "restartPolicy": "Always",
                 "serviceAccountName": "reviews", "serviceAccount": "reviews",
                 "containers": [reviews, shipper],
                 "volumes": [{"name": "logs", "emptyDir": {}}, _kube_api_access("x7k2p")]},
    }


def job_pod() -> dict[str, Any]:
    uid = "5f0c3a52-2f9e-4c53-8d0e-0b8f3c1d2e4f"
    migrate = _container_defaults({
        "name": "migrate", "image": "docker.io/example/db-migrate:2024.6",
        "command": ["/app/migrate", "--to", "latest"],
        "env": [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
        "volumeMounts": [_sa_mount("q4m8d")],
    })
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "db-migrate-", "namespace": "shop",
            "labels": {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name":
                       "db-migrate", "controller-uid": uid, "job-name": "db-migrate"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "db-migrate",
                                 "uid": uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {**copy.deepcopy(_POD_DEFAULTS), "restartPolicy": "Never",
                 "serviceAccountName": "default", "serviceAccount": "default",
                 "containers": [migrate], "volumes": [_kube_api_access("q4m8d")]},
    }


def host_network_pod() -> dict[str, Any]:
    exporter = _container_defaults({
        "name": "node-exporter", "image": "quay.io/prometheus/node-exporter:v1.8.2",
        "args": ["--path.rootfs=/host"],
        "ports": [{"name": "metrics", "containerPort": 9100, "hostPort": 9100, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 9100}},
    })
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "node-exporter-", "namespace": "shop",
                     "labels": {"app": "node-exporter"}},
        "spec": {**copy.deepcopy(_POD_DEFAULTS), "hostNetwork": True, "hostPID": True,
                 "dnsPolicy": "ClusterFirstWithHostNet", "containers": [exporter]},
    }


EVERY_ANNOTATION = {
    "proxy-cpu": "200m", "proxy-cpu-limit": "1", "proxy-memory": "128Mi",
    "proxy-memory-limit": "512Mi", "proxy-image": "registry.example/remora:0.1.0-rc1",
    "log-level": "debug", "include-inbound-ports": "9080,9443",
    "exclude-inbound-ports": "9100", "include-outbound-ports": "443",
    "exclude-outbound-ports": "5432,6379", "exclude-outbound-cidrs": "169.254.169.254/32",
    "include-outbound-cidrs": "198.18.0.0/15,fd00::/8", "opaque-ports": "5432,6379",
    "native-sidecar": "false", "hold-application": "true", "rewrite-probes": "true",
    "drain-seconds": "30", "dns-capture": "false", "merge-metrics": "true", "trace-sampling": "10",
    "access-log": "json",
}


def every_annotation_pod() -> dict[str, Any]:
    """Opted in by its own label in a namespace without the label; every setting given."""
    assert set(EVERY_ANNOTATION) == {a.name for a in ANNOTATIONS}
    ratings = _container_defaults({
        "name": "ratings", "image": "docker.io/example/ratings:1.20.1",
        "ports": [{"name": "https", "containerPort": 9443, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "https", "scheme": "HTTPS"},
                           "periodSeconds": 5, "timeoutSeconds": 3, "successThreshold": 1,
                           "failureThreshold": 3},
        "volumeMounts": [_sa_mount("r2d2c")],
    })
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ratings-0", "namespace": "plain",
                     "labels": {"app": "ratings", "remora.dev/inject": "true"},
                     "annotations": {PREFIX + k: v for k, v in EVERY_ANNOTATION.items()}},
        "spec": {**copy.deepcopy(_POD_DEFAULTS), "restartPolicy": "Always",
                 "serviceAccountName": "ratings", "serviceAccount": "ratings",
                 "containers": [ratings], "volumes": [_kube_api_access("r2d2c")]},
    }


def bad_annotation_pod() -> dict[str, Any]:
    pod = deployment_pod()
    pod["metadata"]["annotations"] = {"remora.dev/proxy-memory": "lots"}
    return pod


def with_inject_label(pod: dict[str, Any], namespace: str, value: str | None) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"]["namespace"] = namespace
    if value is not None:
        pod["metadata"]["labels"]["remora.dev/inject"] = value
    return pod


def admission_review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    """An AdmissionReview v1 request as kube-apiserver sends it."""
    namespace = pod["metadata"]["namespace"]
    owner = (pod["metadata"].get("ownerReferences") or [{"kind": "User"}])[0]["kind"]
    user = {"ReplicaSet": "replicaset-controller", "Job": "job-controller"}.get(owner)
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""), "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": f"system:serviceaccount:kube-system:{user}" if user else "alice",
                         "uid": "1b2c3d4e", "groups": ["system:authenticated"]},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
