"""Kube mode against kmock (a Kubernetes API emulator): the source lists and watches every kind
the registry reads, and TokenReview decides what a token proves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import kmock
import pytest
import yaml

from control_plane.auth import AuthError, TokenReviewAuthenticator
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.sources.files import read_manifests
from control_plane.sources.kube import KINDS, KubeSource, api_client

DATA = Path(__file__).parent / "data"
VERBS = {"list", "watch", "get", "create", "patch", "delete"}


def resource_of(obj: dict) -> str:
    kind = next(k for k in KINDS if k.kind == obj["kind"])
    return f"{kind.api_version}/{kind.plural}"


@dataclass
class Api:
    emulator: kmock.KubernetesEmulator
    url: str
    kubeconfig: str


@pytest.fixture
async def k8s(tmp_path: Path):
    emulator = kmock.KubernetesEmulator()
    for k in KINDS:
        emulator.resources[f"{k.api_version}/{k.plural}"] = kmock.ResourceInfo(
            kind=k.kind, namespaced=True, verbs=VERBS)
    for obj in read_manifests(DATA / "mesh.yaml"):
        if obj["kind"] in {k.kind for k in KINDS}:
            meta = obj["metadata"]
            emulator.objects[resource_of(obj), meta["namespace"], meta["name"]] = obj
    async with emulator, kmock.Server(emulator):
        url = str(emulator.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "control-plane", "user": {"token": "sa-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "control-plane"}}],
        }))
        yield Api(emulator, url, str(kubeconfig))


async def test_lists_and_watches_into_the_same_snapshots_as_files(k8s) -> None:
    source = KubeSource(api_client(k8s.kubeconfig))
    changes = asyncio.Event()
    task = asyncio.create_task(source.run(changes.set))
    try:
        await asyncio.wait_for(changes.wait(), 10)
        assert source.ready
        from_files = Registry.from_objects(read_manifests(DATA / "mesh.yaml"))
        from_kube = Registry.from_objects(source.objects())
        key = ProxyKey("shop", "reviews-v2")
        assert (SnapshotBuilder(from_kube, "cluster.local", "R").snapshot_for(key).config
                == SnapshotBuilder(from_files, "cluster.local", "R").snapshot_for(key).config)

        # A new pod created through the API arrives by the watch and becomes an endpoint.
        changes.clear()
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "reviews-v3", "namespace": "shop",
                            "labels": {"app": "reviews", "version": "v3"}},
               "spec": {"serviceAccountName": "reviews",
                        "containers": [{"name": "app", "ports": [{"name": "http-web", "containerPort": 8080}]}]},
               "status": {"podIP": "198.18.0.23"}}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{k8s.url}/api/v1/namespaces/shop/pods", json=pod) as r:
                assert r.status == 200
            await asyncio.wait_for(changes.wait(), 10)
            cfg = SnapshotBuilder(Registry.from_objects(source.objects()), "cluster.local", "R") \
                .snapshot_for(key).config
            (cluster,) = [c for c in cfg.clusters if c.name == "reviews.shop.svc.cluster.local|9080"]
            assert "198.18.0.23" in [e.address for e in cluster.endpoints]
            # ...and a deletion too.
            changes.clear()
            async with s.delete(f"{k8s.url}/api/v1/namespaces/shop/pods/reviews-v1") as r:
                assert r.status == 200
            await asyncio.wait_for(changes.wait(), 10)
            assert ("Pod", "shop", "reviews-v1") not in {
                (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in source.objects()}
    finally:
        task.cancel()


async def test_service_entries_and_sidecars_are_watched(k8s) -> None:
    source = KubeSource(api_client(k8s.kubeconfig))
    changes = asyncio.Event()
    task = asyncio.create_task(source.run(changes.set))
    key = ProxyKey("shop", "reviews-v2")
    api = f"{k8s.url}/apis/networking.istio.io/v1/namespaces/shop"
    try:
        await asyncio.wait_for(changes.wait(), 10)
        async with aiohttp.ClientSession() as s:
            changes.clear()
            se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                  "metadata": {"name": "ext", "namespace": "shop"},
                  "spec": {"hosts": ["api.example.com"], "addresses": ["198.19.9.1"], "resolution": "STATIC",
                           "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                           "endpoints": [{"address": "198.18.9.1"}]}}
            async with s.post(f"{api}/serviceentries", json=se) as r:
                assert r.status == 200
            await asyncio.wait_for(changes.wait(), 10)
            cfg = SnapshotBuilder(Registry.from_objects(source.objects()), "cluster.local", "R").snapshot_for(key).config
            assert "api.example.com" in {o.service for o in cfg.outbound}
            changes.clear()
            sidecar = {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                       "metadata": {"name": "default", "namespace": "shop"},
                       "spec": {"egress": [{"hosts": ["./reviews.shop.svc.cluster.local"]}]}}
            async with s.post(f"{api}/sidecars", json=sidecar) as r:
                assert r.status == 200
            await asyncio.wait_for(changes.wait(), 10)
            cfg = SnapshotBuilder(Registry.from_objects(source.objects()), "cluster.local", "R").snapshot_for(key).config
            assert {o.service for o in cfg.outbound} == {"reviews.shop.svc.cluster.local"}
    finally:
        task.cancel()


def install_token_review(k8s: Api) -> None:
    def review(req) -> dict:
        # As the API server does: the spec comes back with a status.
        spec = req.data["spec"]
        assert spec["audiences"] == ["remora-ca"]
        head = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
        if spec["token"] != "good":
            return {**head, "status": {"authenticated": False, "error": "token has expired"}}
        return {**head, "status": {
            "authenticated": True, "audiences": ["remora-ca"],
            "user": {"username": "system:serviceaccount:shop:reviews",
                     "extra": {"authentication.kubernetes.io/pod-name": ["reviews-v1"]}}}}

    k8s.emulator["post /apis/authentication.k8s.io/v1/tokenreviews"] << review


# One review per test: kmock stores each created TokenReview and refuses a second (409).
async def test_token_review_proves_the_service_account(k8s) -> None:
    install_token_review(k8s)
    caller = await TokenReviewAuthenticator(api_client(k8s.kubeconfig)).authenticate("good")
    assert (caller.namespace, caller.service_account, caller.pod) == ("shop", "reviews", "reviews-v1")


async def test_token_review_refusal_is_the_reason(k8s) -> None:
    install_token_review(k8s)
    with pytest.raises(AuthError, match="not authenticated: token has expired"):
        await TokenReviewAuthenticator(api_client(k8s.kubeconfig)).authenticate("stale")


async def test_ca_is_generated_into_a_secret_once_and_loaded_after(k8s) -> None:
    from control_plane.ca_secret import load_or_create

    k8s.emulator.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=VERBS)
    client = api_client(k8s.kubeconfig)
    first = await asyncio.to_thread(load_or_create, client, "remora-system", "remora-ca", "cluster.local")
    again = await asyncio.to_thread(load_or_create, client, "remora-system", "remora-ca", "cluster.local")
    assert again.root_pem == first.root_pem  # persisted: a restart keeps the same root
    assert again.signing_key.private_numbers() == first.signing_key.private_numbers()
