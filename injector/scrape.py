"""Prometheus scrape annotations and metrics merging, as Istio's injector does them.

An injected pod is scraped at the proxy (``prometheus.io/scrape: "true"``, port 15090, path
``/stats/prometheus``). When the app declared its own metrics endpoint with those annotations,
the proxy is told where it is (``REMORA_APP_METRICS``) and appends the app's metrics to its
own output, so one scrape target serves both. A pod annotated ``prometheus.io/scrape:
"false"``, or ``remora.dev/merge-metrics: "false"``, keeps its annotations untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.api import ports

SCRAPE, PORT, PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"
PROXY_PATH = "/stats/prometheus"
APP_METRICS_ENV = "REMORA_APP_METRICS"


def apply(annotations: Mapping[str, str], settings: Mapping[str, Any]) -> tuple[dict[str, str], str]:
    """(the pod's new annotations, the app's metrics URL for the proxy or "")."""
    out = dict(annotations)
    if out.get(SCRAPE) == "false" or not settings.get("merge-metrics", True):
        return out, ""
    app_url = ""
    if out.get(SCRAPE) == "true" and str(out.get(PORT, "")).isdigit():
        path = out.get(PATH) or "/metrics"
        app_url = f"http://127.0.0.1:{int(out[PORT])}{path if path.startswith('/') else '/' + path}"
    out[SCRAPE] = "true"
    out[PORT] = str(ports.METRICS_PORT)
    out[PATH] = PROXY_PATH
    return out, app_url
