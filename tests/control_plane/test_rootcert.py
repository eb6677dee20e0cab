"""The root-cert ConfigMap reconciler against kmock: created in every namespace but the excluded
ones, put back after a delete or an edit, rewritten everywhere on root rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from kube_kit import CORE, Api, kmock_api

from control_plane.api.ports import TRUST_CONFIGMAP, TRUST_KEY
from control_plane.rootcert import CREATED, SKIPPED, UNCHANGED, UPDATED, RootCertPublisher
from control_plane.sources.kube import api_client

ROOT_A = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
ROOT_B = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
CM = "v1/configmaps"


@pytest.fixture
async def k8s(tmp_path: Path) -> AsyncIterator[Api]:
    async with kmock_api(tmp_path, CORE, namespaces=["shop", "plain", "kube-system"]) as api:
        yield api


def root_in(k8s: Api, namespace: str) -> str | None:
    cm = k8s.get(CM, namespace, TRUST_CONFIGMAP)
    return None if cm is None else (cm.get("data") or {}).get(TRUST_KEY)


async def until(check: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def publisher(k8s: Api) -> AsyncIterator[RootCertPublisher]:
    pub = RootCertPublisher(api_client(k8s.kubeconfig), ROOT_A, retry=0.2)
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_created_in_every_namespace_but_the_excluded(k8s: Api, publisher: RootCertPublisher) -> None:
    await until(lambda: root_in(k8s, "shop") == ROOT_A and root_in(k8s, "plain") == ROOT_A,
                "the ConfigMap in shop and plain")
    assert root_in(k8s, "kube-system") is None
    cm = k8s.get(CM, "shop", TRUST_CONFIGMAP)
    assert cm is not None and cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "remora"

    # A namespace created later gets it too.
    async with aiohttp.ClientSession() as s:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}
        async with s.post(f"{k8s.url}/api/v1/namespaces", json=ns) as r:
            assert r.status == 200
    await until(lambda: root_in(k8s, "late") == ROOT_A, "the ConfigMap in a new namespace")


async def test_recreated_after_delete_and_restored_after_edit(k8s: Api, publisher: RootCertPublisher) -> None:
    await until(lambda: root_in(k8s, "shop") == ROOT_A, "the ConfigMap in shop")
    url = f"{k8s.url}/api/v1/namespaces/shop/configmaps/{TRUST_CONFIGMAP}"
    async with aiohttp.ClientSession() as s:
        async with s.delete(url) as r:
            assert r.status == 200
        assert root_in(k8s, "shop") is None
        await until(lambda: root_in(k8s, "shop") == ROOT_A, "the ConfigMap recreated")
        async with s.patch(url, json={"data": {TRUST_KEY: "tampered"}},
                           headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200
        await until(lambda: root_in(k8s, "shop") == ROOT_A, "the roots put back")


async def test_rotation_rewrites_every_namespace(k8s: Api, publisher: RootCertPublisher) -> None:
    await until(lambda: root_in(k8s, "shop") == ROOT_A and root_in(k8s, "plain") == ROOT_A, "first roots")
    bundle = ROOT_B + ROOT_A  # the new root first, the old one still trusted during the rollover
    publisher.set_bundle(bundle)
    await until(lambda: root_in(k8s, "shop") == bundle and root_in(k8s, "plain") == bundle,
                "the rotated roots everywhere")
    assert root_in(k8s, "kube-system") is None


async def test_reconcile_says_what_it_did(k8s: Api) -> None:
    pub = RootCertPublisher(api_client(k8s.kubeconfig), ROOT_A, excluded=["plain"])
    pub.namespaces = {"shop": False, "plain": False, "going": True}
    assert await asyncio.to_thread(pub.reconcile, "shop") == CREATED
    assert await asyncio.to_thread(pub.reconcile, "shop") == UNCHANGED
    pub.bundle = ROOT_B
    assert await asyncio.to_thread(pub.reconcile, "shop") == UPDATED
    assert root_in(k8s, "shop") == ROOT_B
    assert await asyncio.to_thread(pub.reconcile, "plain") == SKIPPED  # excluded by configuration
    assert await asyncio.to_thread(pub.reconcile, "going") == SKIPPED  # being deleted
    assert await asyncio.to_thread(pub.reconcile, "unknown") == SKIPPED
    assert root_in(k8s, "plain") is None
