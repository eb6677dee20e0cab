"""The snapshot model: round trip, content hash, and errors that name the bad field."""

from __future__ import annotations

import copy

import pytest

from control_plane.api.model import ConfigError, ProxyConfig

GOOD = {
    "version": "v1",
    "clusters": [
        {"name": "reviews.default.svc.cluster.local|9080", "service": "reviews.default.svc.cluster.local",
         "port": 9080, "protocol": "http",
         "endpoints": [{"address": "198.18.0.11", "port": 9080,
                        "identity": "spiffe://cluster.local/ns/default/sa/reviews", "labels": {"version": "v1"}}]},
        {"name": "reviews.default.svc.cluster.local|9080|v1", "service": "reviews.default.svc.cluster.local",
         "port": 9080, "protocol": "http", "endpoints": []},
    ],
    "outbound": [
        {"service": "reviews.default.svc.cluster.local", "addresses": ["198.19.0.10"], "port": 9080,
         "protocol": "http", "default_cluster": "reviews.default.svc.cluster.local|9080",
         "routes": [{"name": "split", "destinations": [
             {"cluster": "reviews.default.svc.cluster.local|9080|v1", "weight": 80},
             {"cluster": "reviews.default.svc.cluster.local|9080", "weight": 20}]}]},
    ],
    "inbound": {"mtls_mode": "STRICT", "port_mtls": {"8080": "PERMISSIVE"}},
    "opaque_ports": [3306],
}


def test_round_trip_and_hash() -> None:
    cfg = ProxyConfig.from_dict(GOOD)
    assert cfg.inbound.mode_for(8080) == "PERMISSIVE"
    assert cfg.inbound.mode_for(9080) == "STRICT"
    again = ProxyConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.content_hash() == cfg.content_hash()
    changed = copy.deepcopy(GOOD)
    changed["outbound"][0]["routes"][0]["destinations"][0]["weight"] = 50
    assert ProxyConfig.from_dict(changed).content_hash() != cfg.content_hash()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["clusters"][0]["endpoints"][0].update(port=70000), "config.clusters[0].endpoints[0].port: port 70000"),
        (lambda d: d["clusters"][0]["endpoints"][0].update(address="nope"), "'nope' is not an IP address"),
        (lambda d: d["clusters"][0].update(port="9080"), "config.clusters[0].port: expected int"),
        (lambda d: d["outbound"][0].update(default_cluster="missing"), "no cluster named 'missing'"),
        (lambda d: d["outbound"][0]["routes"][0]["destinations"][0].update(cluster="x"), "destinations[0].cluster"),
        (lambda d: d["inbound"].update(mtls_mode="MAYBE"), "mTLS mode 'MAYBE'"),
        (lambda d: d.update(surprise=1), "unknown field 'surprise'"),
        (lambda d: d["clusters"][1].update(name=d["clusters"][0]["name"]), "duplicate cluster"),
        (lambda d: d["outbound"][0]["routes"][0].update(destinations=[]), "at least one destination"),
    ],
)
def test_errors_name_the_field(mutate, message: str) -> None:
    bad = copy.deepcopy(GOOD)
    mutate(bad)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")):
        ProxyConfig.from_dict(bad)
