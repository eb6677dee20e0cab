"""Kube mode against kmock (a Kubernetes API emulator): the source lists and watches every kind
the registry reads, and TokenReview decides what a token proves."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import aiohttp
import kmock
import pytest
from kube_kit import CORE, Api, kmock_api, resource

from control_plane.auth import AuthError, TokenReviewAuthenticator
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.sources.files import read_manifests
from control_plane.sources.kube import KINDS, KubeSource, api_client
from control_plane.sources.listwatch import Kind

DATA = Path(__file__).parent / "data"
CORE_EXTRA = {"v1/namespaces": CORE["v1/namespaces"], "v1/configmaps": CORE["v1/configmaps"]}


def path_of(k: Kind, version: str | None = None) -> str:
    """kmock's resource key for ``k`` at ``version`` (default: the preferred one)."""
    return f"{k.api_version(version or k.versions[0])}/{k.plural}"


def resource_of(obj: dict) -> str:
    return path_of(next(k for k in KINDS if k.kind == obj["kind"]))


def served(kinds=KINDS, versions: dict[str, tuple[str, ...]] | None = None) -> dict[str, kmock.ResourceInfo]:
    """kmock resources for ``kinds``, each at its preferred version unless ``versions`` says."""
    return {path_of(k, v): resource(k.kind) for k in kinds for v in (versions or {}).get(k.kind, k.versions[:1])}


@pytest.fixture
async def k8s(tmp_path: Path):
    async with kmock_api(tmp_path, served()) as api:
        for obj in read_manifests(DATA / "mesh.yaml"):
            if obj["kind"] in {k.kind for k in KINDS}:
                api.add(resource_of(obj), obj)
        yield api


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


def kind_named(name: str) -> Kind:
    return next(k for k in KINDS if k.kind == name)


def mesh_objects(kind: str) -> list[dict]:
    return [o for o in read_manifests(DATA / "mesh.yaml") if o["kind"] == kind]


def requests_for(k8s: Api, path: str) -> list[str]:
    """The query strings of the GETs made to ``path``, in order ("" for a list)."""
    return [r.url.query_string for r in k8s.emulator if r.url.path == path and r.method.value == "GET"]


async def until(check, what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_missing_crd_is_a_warning_not_a_blocked_control_plane(tmp_path: Path, caplog) -> None:
    ap = kind_named("AuthorizationPolicy")
    async with kmock_api(tmp_path, served([k for k in KINDS if k is not ap])) as k8s:
        for obj in mesh_objects("PeerAuthentication"):
            k8s.add(resource_of(obj), obj)
        source = KubeSource(api_client(k8s.kubeconfig), missing_retry=0.3)
        changes = asyncio.Event()
        task = asyncio.create_task(source.run(changes.set))
        try:
            await asyncio.wait_for(changes.wait(), 10)
            assert source.ready and source.waiting_for() == []
            assert "is not served" in source.state["AuthorizationPolicy"]
            assert "AuthorizationPolicy is not served by the API server" in caplog.text
            assert {o["kind"] for o in source.objects()} >= {"PeerAuthentication"}

            # The CRD is installed later: its objects arrive without a restart.
            changes.clear()
            k8s.emulator.resources[path_of(ap)] = resource(ap.kind)
            policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                      "metadata": {"name": "deny-all", "namespace": "shop"}, "spec": {}}
            k8s.add(path_of(ap), policy)
            await until(lambda: any(o["kind"] == "AuthorizationPolicy" for o in source.objects()),
                        "the AuthorizationPolicy after its CRD appeared")
            assert changes.is_set()
        finally:
            task.cancel()


async def test_a_missing_core_kind_keeps_the_control_plane_not_ready(tmp_path: Path) -> None:
    slices = kind_named("EndpointSlice")
    async with kmock_api(tmp_path, served([k for k in KINDS if k is not slices])) as k8s:
        source = KubeSource(api_client(k8s.kubeconfig), missing_retry=0.3)
        changes = asyncio.Event()
        task = asyncio.create_task(source.run(changes.set))
        try:
            await until(lambda: "is not served" in source.state["EndpointSlice"], "the slices' list to fail")
            await asyncio.sleep(0.3)
            assert not source.ready and not changes.is_set()
            (waiting,) = source.waiting_for()
            assert waiting.startswith("EndpointSlice: EndpointSlice is not served")
        finally:
            task.cancel()


async def test_ready_says_what_the_control_plane_waits_for(tmp_path: Path) -> None:
    slices = kind_named("EndpointSlice")
    async with kmock_api(tmp_path, {**served([k for k in KINDS if k is not slices]), **CORE_EXTRA}) as k8s:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = tmp_path / "control.log"
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "remora-control"), "--source", "kube",
                "--kubeconfig", k8s.kubeconfig, "--ca-dir", str(tmp_path / "ca"), "--address", "127.0.0.1",
                "--port", "0", "--monitoring-port", str(port), stdout=out, stderr=asyncio.subprocess.STDOUT)
        try:
            async def ready() -> tuple[int, str]:
                try:
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
                            s.get(f"http://127.0.0.1:{port}/ready") as r:
                        return r.status, await r.text()
                except (aiohttp.ClientError, TimeoutError):
                    return 0, ""
            status, text = 0, ""
            for _ in range(200):
                assert proc.returncode is None, log.read_text()
                status, text = await ready()
                if text.count("waiting for") == 1 and "waiting for EndpointSlice" in text:
                    break  # every other kind listed
                await asyncio.sleep(0.1)
            assert status == 503, (status, text, log.read_text())
            assert "waiting for EndpointSlice: EndpointSlice is not served by the API server" in text
        finally:
            proc.terminate()
            await proc.wait()


async def test_istio_v1beta1_is_read_where_v1_is_not_served(tmp_path: Path) -> None:
    beta = {k.kind: ("v1beta1",) for k in KINDS if k.group.endswith("istio.io")}
    async with kmock_api(tmp_path, served(versions=beta)) as k8s:
        for obj in mesh_objects("PeerAuthentication"):
            k8s.add(path_of(kind_named(obj["kind"]), "v1beta1"), {**obj, "apiVersion": "security.istio.io/v1beta1"})
        source = KubeSource(api_client(k8s.kubeconfig))
        changes = asyncio.Event()
        task = asyncio.create_task(source.run(changes.set))
        try:
            await asyncio.wait_for(changes.wait(), 10)
            assert source.state["PeerAuthentication"] == "listed at security.istio.io/v1beta1"
            pas = [o for o in source.objects() if o["kind"] == "PeerAuthentication"]
            assert len(pas) == len(mesh_objects("PeerAuthentication")) > 0
            registry = Registry.from_objects(source.objects())
            assert len(registry.peer_authentications) == len(pas) and not registry.errors
        finally:
            task.cancel()


async def test_watch_resumes_from_its_resource_version_and_relists_on_410(k8s: Api) -> None:
    services = "/api/v1/services"
    added = {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "late", "namespace": "shop", "resourceVersion": "7"},
             "spec": {"ports": [{"name": "http", "port": 80}]}}
    gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
            "reason": "Expired", "message": "too old resource version: 7 (9)"}
    # First watch: one event, then the server ends it. Second: 410 Gone. Then kmock's own.
    k8s.emulator["watch v1/services"][:1] << (json.dumps({"type": "ADDED", "object": added}) + "\n").encode()
    k8s.emulator["watch v1/services"][1:2] << (json.dumps({"type": "ERROR", "object": gone}) + "\n").encode()
    source = KubeSource(api_client(k8s.kubeconfig), retry=0.1)
    changes = asyncio.Event()
    task = asyncio.create_task(source.run(changes.set))
    try:
        await until(lambda: len(requests_for(k8s, services)) >= 5, "list, watch, watch, list, watch")
        queries = requests_for(k8s, services)[:5]
        assert ["watch=true" in q for q in queries] == [False, True, True, False, True]
        assert "resourceVersion=7" in queries[2]  # resumed where the first watch ended, no re-list
        assert "allowWatchBookmarks=true" in queries[1]
        # The re-list after 410 is the truth: "late" came only from the ended watch, so it is gone.
        await until(lambda: source.ready, "ready")
        assert ("shop", "late") not in {(o["metadata"]["namespace"], o["metadata"]["name"])
                                        for o in source.objects() if o["kind"] == "Service"}
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

    k8s.emulator.resources["v1/secrets"] = resource("Secret")
    client = api_client(k8s.kubeconfig)
    first = await asyncio.to_thread(load_or_create, client, "remora-system", "remora-ca", "cluster.local")
    again = await asyncio.to_thread(load_or_create, client, "remora-system", "remora-ca", "cluster.local")
    assert again.root_pem == first.root_pem  # persisted: a restart keeps the same root
    assert again.signing_key.private_numbers() == first.signing_key.private_numbers()
