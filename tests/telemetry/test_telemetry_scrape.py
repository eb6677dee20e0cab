"""Scrape annotations on injected pods, and metrics merging of a real app exporter."""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

from injector import scrape
from injector.meshconfig import MeshConfig
from injector.template import inject_pod
from sidecar.metrics_merge import parse_url
from sidecar.runtime import ProxyRuntime
from sidecar.settings import Settings


def pod(annotations: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "demo", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "a:1"}]}}


def proxy_env(p: dict) -> dict[str, str]:
    containers = p["spec"]["initContainers"] + p["spec"].get("containers", [])
    (proxy,) = [c for c in containers if c["name"] == "remora-proxy"]
    return {e["name"]: e.get("value") for e in proxy["env"]}


def test_injected_pod_is_scraped_at_the_proxy_and_the_app_endpoint_is_handed_over() -> None:
    plain = inject_pod(pod({}), MeshConfig())
    a = plain["metadata"]["annotations"]
    assert (a["prometheus.io/scrape"], a["prometheus.io/port"], a["prometheus.io/path"]) == (
        "true", "15090", "/stats/prometheus")
    assert scrape.APP_METRICS_ENV not in proxy_env(plain)

    app = inject_pod(pod({"prometheus.io/scrape": "true", "prometheus.io/port": "9102",
                          "prometheus.io/path": "app/metrics"}), MeshConfig())
    assert app["metadata"]["annotations"]["prometheus.io/port"] == "15090"
    assert proxy_env(app)[scrape.APP_METRICS_ENV] == "http://127.0.0.1:9102/app/metrics"


@pytest.mark.parametrize("annotations", [
    {"prometheus.io/scrape": "false", "prometheus.io/port": "9102"},
    {"prometheus.io/scrape": "true", "prometheus.io/port": "9102", "remora.dev/merge-metrics": "false"},
])
def test_opted_out_pods_keep_their_annotations(annotations: dict[str, str]) -> None:
    p = inject_pod(pod(annotations), MeshConfig())
    a = p["metadata"]["annotations"]
    assert {k: a[k] for k in annotations} == annotations
    assert "prometheus.io/path" not in a and scrape.APP_METRICS_ENV not in proxy_env(p)


@pytest.mark.parametrize("url", ["http://10.0.0.1:9102/m", "https://127.0.0.1:9102/", "http://127.0.0.1/m"])
def test_bad_app_metrics_url_is_named(url: str) -> None:
    with pytest.raises(ValueError, match="REMORA_APP_METRICS"):
        parse_url(url)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


async def test_proxy_output_merges_the_apps_exporter_and_survives_its_absence() -> None:
    registry = CollectorRegistry()
    Counter("shop_orders", "orders taken", registry=registry).inc(3)
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rt = ProxyRuntime(Settings(app_metrics=f"http://127.0.0.1:{port}/metrics"))
    try:
        status, ctype, body = await rt._metrics("GET", "/stats/prometheus", {})
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert status == 200 and ctype.startswith("text/plain")
        assert fams["shop_orders"].samples[0].value == 3  # the app's own series
        assert "istio_requests" in fams and "remora_active_connections" in fams
        assert fams["remora_app_metrics_scrape_failures"].samples[0].value == 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # nothing listens there now
        assert s.connect_ex(("127.0.0.1", port)) != 0
    status, _, body = await rt._metrics("GET", "/metrics", {})
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert status == 200 and "shop_orders" not in fams
    assert fams["remora_app_metrics_scrape_failures"].samples[0].value == 1
