"""How the live commands reach a Kubernetes cluster (kmock as the API server): the injector is
found next to the control plane, and ``stat``/``dashboard`` list the pods from the API and
scrape each proxy through the API server's pod proxy. kmock can neither port-forward nor
proxy to pods, so those steps end in one clear line each."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest
from kube_kit import CORE, kmock_api

from remoractl import meshsource
from remoractl.target import TargetError, resolve

LABELS = {"app.kubernetes.io/name": "remora"}


def pod(name: str, namespace: str, containers: list[str], owner: tuple[str, str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": "u", "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": c, "image": "x"} for c in containers]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}}


def args(kubeconfig: str, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"control_plane_url": None, "kubeconfig": kubeconfig, "context": None,
                                 "control_plane_namespace": "remora-system", "injector_url": None,
                                 "prometheus": None, "namespace": "shop", **kw})


async def test_kubernetes_injector_and_proxy_metrics(tmp_path: Path) -> None:
    async with kmock_api(tmp_path, CORE) as api:
        api.add("v1/pods", pod("remora-control-7d9f", "remora-system", ["control"],
                               labels={**LABELS, "app.kubernetes.io/component": "control-plane"}))
        target = await asyncio.to_thread(resolve, args(api.kubeconfig))
        with pytest.raises(TargetError, match="no running remora-injector pod in namespace remora-system"):
            await asyncio.to_thread(target.injector)
        api.add("v1/pods", pod("remora-injector-5c6b", "remora-system", ["injector"],
                               labels={**LABELS, "app.kubernetes.io/component": "injector"}))
        injector = await asyncio.to_thread(target.injector)
        assert injector.where.startswith("remora-injector pod remora-system/remora-injector-5c6b")

        api.add("v1/pods", pod("web-5d8f-x2x9q", "shop", ["web", "remora-proxy"], ("ReplicaSet", "web-5d8f"),
                               {"pod-template-hash": "5d8f"}))
        api.add("v1/pods", pod("db-0", "shop", ["db"], ("StatefulSet", "db")))
        source = await asyncio.to_thread(meshsource.from_args, args(api.kubeconfig))
        assert isinstance(source, meshsource.KubeSource)
        data = await source.current(5.0)
        assert sorted((p["workload"], p["meshed"]) for p in data["pods"]) == [
            ("db.shop", False), ("web.shop", True)]
        # Only the meshed pod is scraped; kmock has no pod proxy: a one-line reason per pod.
        (why,) = data["scrape_errors"].values()
        assert list(data["scrape_errors"]) == ["web-5d8f-x2x9q"] and "\n" not in why
        assert data["proxies_error"].startswith("cannot port-forward to pod remora-system/remora-control-7d9f")
