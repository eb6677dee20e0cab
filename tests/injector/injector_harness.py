"""Run the real ``remora-injector`` (a subprocess) and, for operator mode, a kmock API server.

kmock runs in a thread with its own event loop so sync tests can use it; the injector is
started by PID and always stopped by that PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import yaml
from kube_kit import resource, write_kubeconfig

BIN = Path(sys.executable).parent  # the virtualenv's console scripts
NAMESPACES = {
    "shop": {"remora.dev/inject": "enabled"},
    "plain": {},
    "kube-system": {},
}


class KubeEmulator:
    """A kmock Kubernetes emulator with the namespaces above, served from a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),),
                                        daemon=True)
        self.url = ""

    async def _main(self) -> None:
        self.k8s = kmock.KubernetesEmulator()
        self.k8s.resources["v1/pods"] = resource("Pod")
        self.k8s.resources["v1/namespaces"] = resource("Namespace", False)
        self.k8s.resources["admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"] = \
            resource("MutatingWebhookConfiguration", False)
        for name, labels in NAMESPACES.items():
            self.k8s.objects["v1/namespaces", None, name] = {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        self._stop = asyncio.Event()
        async with self.k8s, kmock.Server(self.k8s):
            self.url = str(self.k8s.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def webhook_configuration(self, name: str) -> dict[str, Any] | None:
        key = ("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", None, name)
        future = asyncio.run_coroutine_threadsafe(self._get(key), self._loop)
        return future.result(5)

    async def _get(self, key: tuple[str, None, str]) -> dict[str, Any] | None:
        try:
            obj = self.k8s.objects[key]
        except KeyError:
            return None
        if obj.deleted:
            return None
        return json.loads(json.dumps(obj.raw, default=dict))  # kmock's views -> plain JSON

    def kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Webhook:
    url: str  # where AdmissionReviews are POSTed
    ca: Path  # the generated CA bundle (what the API server gets as caBundle)
    metrics_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST one AdmissionReview v1 over HTTPS, verifying the server against the CA."""
        context = ssl.create_default_context(cafile=str(self.ca))
        body = json.dumps(request).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=context, timeout=10) as rsp:
            return json.loads(rsp.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as rsp:
            return rsp.read().decode()


def _wait(check, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"remora-injector exited ({process.returncode}):\n{log.read_text()}")
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}:\n{log.read_text()}")


def _tls_ready(port: int, ca: Path) -> bool:
    if not ca.exists():
        return False
    try:
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                context.wrap_socket(raw, server_hostname="localhost"):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def run_injector(tmp: Path, mode: str, kube: KubeEmulator | None = None,
                 extra: tuple[str, ...] = ()) -> Iterator[Webhook]:
    """Start ``remora-injector`` in ``mode`` ("operator" or "standalone"); always stopped."""
    port, metrics_port = free_port(), free_port()
    certs = tmp / "certs"
    argv = [str(BIN / "remora-injector"), "--addr", "127.0.0.1", "--port", str(port),
            "--host", "localhost", "--self-signed-dir", str(certs),
            "--metrics-addr", "127.0.0.1", "--metrics-port", str(metrics_port), "-v", *extra]
    env = dict(os.environ)
    if mode == "operator":
        assert kube is not None
        env["KUBECONFIG"] = str(kube.kubeconfig(tmp / "kubeconfig"))
    else:
        namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": n, "labels": labels}} for n, labels in NAMESPACES.items()]
        (tmp / "namespaces.yaml").write_text(yaml.safe_dump_all(namespaces))
        argv += ["--without-api-server", "--namespaces", str(tmp / "namespaces.yaml")]
    log = tmp / "injector.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        ca = certs / "ca.crt"
        _wait(lambda: _tls_ready(port, ca), "the webhook's TLS port", process, log)
        url = f"https://localhost:{port}/remora-inject"
        if mode == "operator":
            assert kube is not None
            config = _wait(lambda: _configured(kube), "the MutatingWebhookConfiguration", process, log)
            url = config["webhooks"][0]["clientConfig"]["url"]  # exactly what the API server would use
            # Namespace labels come from kopf's index: wait until every namespace is indexed.
            _wait(lambda: log.read_text().count("Indexer 'namespace_labels' succeeded")
                  >= len(NAMESPACES), "the namespace index", process, log)
        yield Webhook(url, ca, f"http://127.0.0.1:{metrics_port}/metrics", process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _configured(kube: KubeEmulator) -> dict[str, Any] | None:
    config = kube.webhook_configuration("remora-injector")
    return config if config and config.get("webhooks") else None


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]] | None:
    patch = response["response"].get("patch")
    return json.loads(base64.b64decode(patch)) if patch else None
