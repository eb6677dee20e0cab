"""The local cluster's DNS pieces without a cluster: resolv.conf text and the service table."""

from __future__ import annotations

from pathlib import Path

import yaml

from local_cluster import nodedns
from sidecar import dnswire

SERVICES = [
    {"metadata": {"name": "reviews", "namespace": "demo"},
     "spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
              "ports": [{"name": "http", "port": 9080}, {"name": "grpc", "port": 9090}]}},
    {"metadata": {"name": "headless", "namespace": "demo"}, "spec": {"clusterIP": "None"}},
]


def test_resolv_conf_is_kubernetes_shaped() -> None:
    text = nodedns.resolv_conf("demo")
    assert "search demo.svc.cluster.local svc.cluster.local cluster.local\n" in text
    assert "nameserver 198.18.0.1\n" in text and "options ndots:5" in text


def test_only_full_service_names_are_known_and_srv_uses_port_names() -> None:
    table = nodedns.table_from_services(SERVICES)
    assert set(table.names) == {"reviews.demo.svc.cluster.local"}  # search domains do the rest
    q = dnswire.Question("_grpc._tcp.reviews.demo.svc.cluster.local", dnswire.SRV, dnswire.IN)
    answer = table.answer(q)
    assert answer is not None and len(answer[1]) == 1
    assert answer[1][0].rdata[4:6] == (9090).to_bytes(2, "big")


def test_the_watch_rereads_changed_service_files(tmp_path: Path) -> None:
    watch = nodedns.ServiceWatch(tmp_path)
    assert watch().names == {}
    (tmp_path / "service.demo.reviews.yaml").write_text(yaml.safe_dump(SERVICES[0]))
    (tmp_path / "pod.demo.x.yaml").write_text("kind: Pod\n")
    assert set(watch().names) == {"reviews.demo.svc.cluster.local"}
    (tmp_path / "service.demo.reviews.yaml").unlink()
    assert watch().names == {}
