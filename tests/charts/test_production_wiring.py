"""The production wiring, end to end: remora-control and remora-injector started with exactly the
container args the chart renders (default values), against kmock serving the chart's CRDs but
one (a missing Istio CRD must be tolerated).

What the test does in the API server's and the kubelet's place, and nothing else: it writes each
pod's volumes from the rendered Secrets and ConfigMaps (``kubelet_kit``), expands ``$(POD_IP)``,
points both processes at kmock with KUBECONFIG (in a cluster: the service account), POSTs the
AdmissionReview to the webhook over HTTPS as the chart's MutatingWebhookConfiguration says
(its caBundle, its service name and path), and answers TokenReviews. The one change to the
rendered args: the listening ports (15012, 15014, 9443) become free ones, because tests run
side by side on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from chart_kit import NAMESPACE, Rendered, RenderError, render, selector_matches
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from kube_kit import CORE, Api, kmock_api, resource
from kubelet_kit import PodFiles, argv_of, env_of, replace_flag

from control_plane.api.ports import TRUST_CONFIGMAP, TRUST_KEY
from injector.template import PROXY_NAME, TOKEN_DIR, TOKEN_FILE
from sidecar.discovery import DiscoveryClient, DiscoverySettings

MISSING_CRD = "authorizationpolicies.security.istio.io"
TOKEN = "projected-token-of-shop-reviews"  # what the kubelet mounts; only TokenReview says whose it is
SHOP = {"remora.dev/inject": "enabled"}
TOKENREVIEWS = "authentication.k8s.io/v1/tokenreviews"
pytestmark = pytest.mark.timeout(120)
DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "template": {
        "metadata": {"labels": {"app": "reviews", "version": "v1"}},
        "spec": {"serviceAccountName": "reviews", "containers": [{
            "name": "reviews", "image": "registry.example/reviews:1.0",
            "ports": [{"name": "http", "containerPort": 9080}]}]}}},
}


def free_port() -> int:
    """A port to listen on later, below Linux's ephemeral range (32768+): a port the kernel
    handed out as free may be taken by another connection's source port before we bind it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Pod the ReplicaSet controller would create from ``deployment`` (before admission)."""
    template = deployment["spec"]["template"]
    name = deployment["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "generateName": f"{name}-5d4b9c7f-", "namespace": deployment["metadata"]["namespace"],
        "labels": {**template["metadata"]["labels"], "pod-template-hash": "5d4b9c7f"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-5d4b9c7f",
                             "uid": "00000000-0000-0000-0000-000000000001", "controller": True}]},
        "spec": json.loads(json.dumps(template["spec"]))}


def served_crds(chart: Rendered) -> dict[str, Any]:
    """kmock resources for every version of every CRD the chart renders, but MISSING_CRD."""
    out = {}
    for crd in chart.all("CustomResourceDefinition"):
        if crd["metadata"]["name"] == MISSING_CRD:
            continue
        spec = crd["spec"]
        for v in spec["versions"]:
            out[f"{spec['group']}/{v['name']}/{spec['names']['plural']}"] = resource(spec["names"]["kind"])
    return out


def install_token_review(api: Api) -> list[str]:
    """Answer TokenReviews as the API server would: only TOKEN is a (shop/reviews) account."""
    seen: list[str] = []

    def review(req) -> dict[str, Any]:
        spec = req.data["spec"]
        seen.append(spec["token"])
        with contextlib.suppress(KeyError):  # kmock keeps created objects; a second review would be 409
            del api.emulator.objects[TOKENREVIEWS, None, None]
        head = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
        if spec["token"] != TOKEN or spec.get("audiences") != ["remora-ca"]:
            return {**head, "status": {"authenticated": False, "error": "invalid bearer token"}}
        return {**head, "status": {"authenticated": True, "audiences": ["remora-ca"], "user": {
            "username": "system:serviceaccount:shop:reviews",
            "extra": {"authentication.kubernetes.io/pod-name": ["reviews-5d4b9c7f-abcde"]}}}}

    api.emulator[f"post /apis/{TOKENREVIEWS}"] << review
    return seen


class Component:
    """One of the chart's Deployments, run here as the kubelet would run its container."""

    def __init__(self, chart: Rendered, name: str, api: Api, tmp: Path, ports: dict[str, tuple[str, int]]) -> None:
        spec = chart.get("Deployment", name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pod = {"metadata": {"name": f"{name}-0", "namespace": NAMESPACE}, "spec": spec,
               "status": {"podIP": "127.0.0.1"}}
        files = PodFiles(pod, container, tmp / name,
                         lambda kind, n: chart.get(kind, n)["data"])
        self.env = {**os.environ, **env_of(pod, container, files), "KUBECONFIG": api.kubeconfig}
        argv = argv_of(container, self.env, files)
        for flag, (rendered, port) in ports.items():
            argv = replace_flag(argv, flag, rendered, str(port))
        self.argv, self.name = argv, name
        self.log = tmp / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stdout=out,
                                                             stderr=asyncio.subprocess.STDOUT)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()}")


async def until(check, what: str, *components: Component, timeout: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for c in components:
            c.alive()
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    logs = "\n".join(f"--- {c.name}\n{c.log.read_text()[-3000:]}" for c in components)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


async def http_get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


class Recorder:
    """The proxy runtime's two entry points, recorded."""

    def __init__(self) -> None:
        self.certs: list[tuple[bytes, bytes, bytes]] = []

    def apply_config(self, cfg: Any) -> None:
        pass

    def apply_certificate(self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> None:
        self.certs.append((key_pem, chain_pem, roots_pem))


@contextlib.asynccontextmanager
async def discovery(settings: DiscoverySettings) -> AsyncIterator[Recorder]:
    runtime = Recorder()
    task = asyncio.create_task(DiscoveryClient(runtime, settings).run())
    try:
        yield runtime
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[call-arg,union-attr]
                                   ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure means: not signed by it
        return False
    return True


async def test_the_chart_runs_the_mesh_on_a_kubernetes_api(tmp_path: Path) -> None:
    chart = Rendered(render({}), {})
    ca_root = base64.b64decode(chart.get("Secret", "remora-ca")["data"]["root-cert.pem"]).decode()
    async with kmock_api(tmp_path, {**CORE, **served_crds(chart)}) as api:
        for name, labels in (("shop", SHOP), (NAMESPACE, {}), ("kube-system", {})):
            api.add("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}})
        reviews = install_token_review(api)
        cp_port, cp_monitoring, webhook_port = free_port(), free_port(), free_port()
        control = Component(chart, "remora-control", api, tmp_path, {
            "--port": ("15012", cp_port), "--monitoring-port": ("15014", cp_monitoring)})
        injector = Component(chart, "remora-injector", api, tmp_path, {
            "--port": ("9443", webhook_port), "--metrics-port": ("15014", free_port())})
        try:
            await control.start()
            await injector.start()
            ready = f"http://127.0.0.1:{cp_monitoring}/ready"

            # Ready although the AuthorizationPolicy CRD is missing: a warning, not a block.
            await until(lambda: _ok(ready), "the control plane's /ready", control)
            assert "AuthorizationPolicy is not served by the API server" in control.log.read_text()

            # The root ConfigMap, in the labelled namespace (not in kube-system), holds the CA's root.
            async def root_in_shop() -> str | None:
                cm = api.get("v1/configmaps", "shop", TRUST_CONFIGMAP)
                return cm and cm["data"][TRUST_KEY]
            assert await until(root_in_shop, "the root ConfigMap in shop", control) == ca_root
            assert api.get("v1/configmaps", "kube-system", TRUST_CONFIGMAP) is None

            # The Deployment's pod goes through the webhook as the API server would send it.
            pod = pod_of(DEPLOYMENT)
            hook = chart.get("MutatingWebhookConfiguration", "remora-injector")["webhooks"][0]
            namespace = api.get("v1/namespaces", None, "shop")
            assert namespace and selector_matches(hook["namespaceSelector"], namespace["metadata"]["labels"])
            assert selector_matches(hook["objectSelector"], pod["metadata"]["labels"])
            answer = await until(lambda: _admit(hook, webhook_port, pod), "the webhook's answer", injector,
                                 timeout=60)  # kopf serves once its namespace index is filled
            assert answer["allowed"] is True and answer["patchType"] == "JSONPatch", answer
            injected = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["patch"])))
            injected["metadata"]["name"] = "reviews-5d4b9c7f-abcde"  # generateName, as the API server does
            injected["status"] = {"podIP": "198.18.0.31", "phase": "Running"}
            api.add("v1/pods", injected)
            spec = injected["spec"]
            (proxy,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == PROXY_NAME]
            trust = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == TRUST_CONFIGMAP]
            assert trust, "the injected pod mounts the root ConfigMap"

            # The proxy, with the environment and volumes the kubelet would give it, gets a
            # certificate only once TokenReview has proved its token.
            files = PodFiles(injected, proxy, tmp_path / "reviews",
                             lambda kind, n: (api.get("v1/configmaps", "shop", n) or {}).get("data"), "stale")
            env = env_of(injected, proxy, files)
            address, _, _ = env["REMORA_CONTROL_PLANE"].rpartition(":")
            settings = DiscoverySettings.from_env({**env, "REMORA_CONTROL_PLANE": f"127.0.0.1:{cp_port}",
                                                   "REMORA_CONTROL_PLANE_SAN": address})
            settings.backoff_initial, settings.backoff_max = 0.05, 0.2
            metrics = f"http://127.0.0.1:{cp_monitoring}/metrics"
            async with discovery(settings) as refused:
                await until(lambda: _metric(metrics, "remora_control_auth_failures_total"),
                            "the stale token's refusal", control)
            assert refused.certs == [] and set(reviews) == {"stale"}  # asked, and refused
            (files.mounts[TOKEN_DIR] / TOKEN_FILE).write_text(TOKEN)
            async with discovery(settings) as proxy_runtime:
                await until(lambda: _value(proxy_runtime.certs), "a workload certificate", control)
            assert reviews[-1] == TOKEN
            _, chain, roots = proxy_runtime.certs[0]
            leaf = x509.load_pem_x509_certificates(chain)[0]
            uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier)
            assert uris == ["spiffe://cluster.local/ns/shop/sa/reviews"]
            root = x509.load_pem_x509_certificate(ca_root.encode())
            assert signed_by(leaf, root) and ca_root in roots.decode()

            # After a restart the control plane serves with the same CA (the Secret's), and the
            # ConfigMaps keep the same root.
            await control.stop()
            await control.start()
            await until(lambda: _ok(ready), "/ready after the restart", control)
            served = await asyncio.to_thread(_serving_chain, cp_port, ca_root, address)
            assert signed_by(served, root)
            assert await root_in_shop() == ca_root
        finally:
            await injector.stop()
            await control.stop()


async def _ok(url: str) -> bool:
    return (await http_get(url))[0] == 200


async def _value(v: Any) -> Any:
    return v


async def _metric(url: str, name: str) -> float:
    _, text = await http_get(url)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _admit(hook: dict[str, Any], port: int, pod: dict[str, Any]) -> dict[str, Any] | None:
    """POST the AdmissionReview as the API server does; None while the webhook is not serving
    yet or does not know the namespace yet (503, fail closed)."""
    client = hook["clientConfig"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(client["caBundle"]).decode())
    service = client["service"]
    host = f"{service['name']}.{service['namespace']}.svc"
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e911857d-c318-11e8-bbad-025000000001", "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": pod["metadata"]["namespace"], "object": pod, "dryRun": False,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"}}}
    try:
        conn = aiohttp.TCPConnector(ssl=ctx, resolver=_Fixed(host))
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=5)) as s, \
                s.post(f"https://{host}:{port}{service['path']}", json=review) as r:
            response = (await r.json())["response"]
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    if not response["allowed"] and response["status"]["code"] == 503:
        return None
    return response


class _Fixed(aiohttp.abc.AbstractResolver):
    """The Service's DNS name resolves to this host (TLS still checks the name)."""

    def __init__(self, host: str) -> None:
        self.host = host

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        assert host == self.host, host
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


def _serving_chain(port: int, root_pem: str, name: str) -> x509.Certificate:
    ctx = ssl.create_default_context(cadata=root_pem)  # verifies the chain up to the Secret's root
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)



def test_the_chart_and_the_control_plane_exclude_the_same_namespaces_by_default() -> None:
    from control_plane.rootcert import DEFAULT_EXCLUDED

    args = Rendered(render({}), {}).container("remora-control")["args"]
    assert args[args.index("--root-cert-excluded-namespaces") + 1] == ",".join(DEFAULT_EXCLUDED)
    custom = Rendered(render({"controlPlane": {"rootCertExcludedNamespaces": []}}), {})
    args = custom.container("remora-control")["args"]
    assert args[args.index("--root-cert-excluded-namespaces") + 1] == ""


async def test_extra_roots_reach_every_namespace_for_a_root_rotation(tmp_path: Path) -> None:
    from control_plane.ca import CertificateAuthority

    new_root = CertificateAuthority.generate("cluster.local").root_pem.decode()
    chart = Rendered(render({"controlPlane": {"ca": {"extraRoots": new_root}}}), {})
    ca_root = base64.b64decode(chart.get("Secret", "remora-ca")["data"]["root-cert.pem"]).decode()
    async with kmock_api(tmp_path, {**CORE, **served_crds(chart)}, namespaces=["shop"]) as api:
        control = Component(chart, "remora-control", api, tmp_path, {
            "--port": ("15012", free_port()), "--monitoring-port": ("15014", free_port())})
        try:
            await control.start()

            async def bundle_in_shop() -> str | None:
                cm = api.get("v1/configmaps", "shop", TRUST_CONFIGMAP)
                return cm and cm["data"][TRUST_KEY]
            assert await until(bundle_in_shop, "the trust bundle in shop", control) == ca_root + new_root
        finally:
            await control.stop()


def test_extra_roots_must_be_pem_certificates() -> None:
    with pytest.raises(RenderError, match="extraRoots"):
        render({"controlPlane": {"ca": {"extraRoots": "not a certificate"}}})
