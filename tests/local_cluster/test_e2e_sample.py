"""The must-show end-to-end test: the sample app, injected, on the local cluster.

Checks that every app pod was injected, that remora-init's rules are in each pod's namespace,
that requests succeed through the proxies, that reviews is split 80/20 within tolerance, that
each server's proxy saw its client's SPIFFE identity, that plaintext is refused under STRICT,
and that after `down` nothing is left (namespaces, processes, files).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from lc_kit import REMORACTL, LocalCluster, sample_cluster

from local_cluster.procs import PidRecords, is_alive
from local_cluster.testing import sample

pytestmark = [pytest.mark.root, pytest.mark.slow]
TD = "spiffe://cluster.local/ns/demo/sa"
# server workload -> the client identity its inbound proxy must have seen
CALLERS = {"web": f"{TD}/loadgen", "catalog": f"{TD}/web", "reviews-v1": f"{TD}/catalog",
           "reviews-v2": f"{TD}/catalog"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with sample_cluster(tmp_path_factory.mktemp("e2e") / "state") as lc:
        yield lc


def test_every_app_pod_is_injected_with_rules_in_place(cluster: LocalCluster) -> None:
    pods = sample.pods(cluster.state)
    assert {p["workload"] for p in pods} == {"web", "catalog", "reviews-v1", "reviews-v2", "loadgen"}
    for p in pods:
        assert sample.injected(p), p["containers"]
        assert p["proxyVersion"]
        rules = subprocess.run(["ip", "netns", "exec", p["netns"], "iptables-legacy-save", "-t", "nat"],
                               capture_output=True, text=True).stdout
        assert "-j REDIRECT --to-ports 15001" in rules, (p["name"], rules)
        assert "-j REDIRECT --to-ports 15006" in rules, (p["name"], rules)


def test_requests_succeed_split_and_identities(cluster: LocalCluster) -> None:
    m = sample.measure(cluster.state, 10)
    report = sample.as_json(m)
    assert not m.scrape_errors, report
    outbound = {(e.workload, e.service.split(".")[0]): e for e in m.edges if e.direction == "outbound"}
    for edge in (("loadgen", "web"), ("web", "catalog"), ("catalog", "reviews")):
        e = outbound.get(edge)
        assert e is not None and e.requests > 20, report
        assert e.success_rate >= 0.95, report
    assert sample.split_ok(m.split, tolerance=0.1), report
    inbound = {e.workload: e for e in m.edges if e.direction == "inbound"}
    for server, caller in CALLERS.items():
        assert inbound[server].peers == {caller}, report
    assert m.plaintext_refused, m.plaintext


def test_exec_reaches_the_app_through_the_mesh(cluster: LocalCluster) -> None:
    out = cluster.ok("exec", "-n", "demo", "loadgen", "--", "curl", "-s", "-m", "5", "http://web:8080/")
    assert json.loads(out)["reviewsVersion"] in ("v1", "v2")


def test_proxy_status_and_config_from_the_host_with_no_flags(cluster: LocalCluster) -> None:
    # As a user would: the local cluster's state directory says where its control plane is.
    env = {**cluster.env, "KUBECONFIG": ""}
    run = lambda *a: subprocess.run([REMORACTL, *a], env=env, capture_output=True, text=True,  # noqa: E731
                                    timeout=30)
    res = run("proxy-status")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "STATUS"]
    synced = {r.split()[0].split(".")[0].split("-")[0] for r in rows if r.split()[1] == "SYNCED"}
    assert {"web", "catalog", "reviews", "loadgen"} <= synced, res.stdout
    web = next(r.split()[0] for r in rows if r.startswith("web-"))
    res = run("proxy-config", web)
    assert res.returncode == 0, res.stderr
    assert "catalog.demo.svc.cluster.local" in res.stdout and "inbound mTLS: STRICT" in res.stdout, res.stdout
    # Every other live command finds the same control plane, and the injector next to it.
    res = run("version")
    assert res.returncode == 0 and "(revision default)" in res.stdout.splitlines()[1], res
    assert res.stdout.splitlines()[2].startswith("injector version: ") and "unknown" not in res.stdout, res
    res = run("check", "--proxy")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    res = run("stat", "-n", "demo", "--window", "1", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert {"web.demo", "catalog.demo"} <= {w["workload"] for w in json.loads(res.stdout)["workloads"]}


def test_down_leaves_nothing(cluster: LocalCluster) -> None:
    pids = PidRecords(cluster.state.pids).alive()
    assert len(pids) > 10  # control plane, injector, and two processes per pod at least
    assert cluster.ctl("down").returncode == 0
    assert cluster.leftovers() == []
    assert [p for p in pids if is_alive(p)] == []
