"""The chart's monitoring objects (off by default) and its Grafana dashboards' queries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from promql_refs import DASHBOARDS, expressions, refs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "charts"))  # chart_kit
from chart_kit import CHART, NAMESPACE, render  # noqa: E402

ON = {"monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True},
                     "grafanaDashboards": {"enabled": True}, "labels": {"release": "prom"}}}


def test_off_by_default() -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & {"PodMonitor", "ServiceMonitor"}
    assert not [o for o in render() if o["metadata"]["name"].endswith("-dashboard")]


def test_monitors_and_dashboards_when_enabled() -> None:
    objs = render(ON)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    pm = by[("PodMonitor", "remora-proxies")]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert (ep["port"], ep["path"]) == ("http-metrics", "/stats/prometheus")
    assert pm["metadata"]["labels"]["release"] == "prom"
    sm = by[("ServiceMonitor", "remora-control")]
    assert sm["spec"]["endpoints"][0]["port"] == "http-monitoring"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    control = by[("Service", "remora-control")]
    assert sm["spec"]["selector"]["matchLabels"].items() <= control["metadata"]["labels"].items()
    assert {p["name"] for p in control["spec"]["ports"]} >= {"http-monitoring"}
    maps = {n: o for (k, n), o in by.items() if k == "ConfigMap" and n.endswith("-dashboard")}
    assert sorted(maps) == [f"{p.stem}-dashboard" for p in DASHBOARDS]
    for name, cm in maps.items():
        kubernetes_validate.validate(cm, kubernetes_validate.latest_version(), strict=True)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = cm["data"].values()
        assert json.loads(text) == json.loads((CHART / "dashboards" / f"{name[:-10]}.json").read_text())


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_grafana_json_with_parseable_queries(path: Path) -> None:
    d = json.loads(path.read_text())
    assert d["uid"] == path.stem and d["panels"]
    for expr in expressions(d):
        assert refs(expr).metrics, expr


def test_reference_check_catches_misspelt_metric_and_label() -> None:
    r = refs('histogram_quantile(0.99, sum(rate(istio_request_duration_milisecond_bucket'
             '{reporter="source", destinaton_service=~"$service"}[1m])) by (le, source_app))')
    assert r.metrics == [("istio_request_duration_milisecond_bucket",
                          {"reporter", "destinaton_service"})]
    assert r.grouping == {"le", "source_app"}
    with pytest.raises(ValueError):
        refs("sum(rate(istio_requests_total[1m])")
