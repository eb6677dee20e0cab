"""``remoractl analyze --kubeconfig``: the same findings from a Kubernetes API (kmock) as from
the files the objects came from; kinds the server does not serve are skipped and named."""

from __future__ import annotations

import asyncio

from test_kube_source import DATA, k8s  # noqa: F401 (a fixture)
from test_remoractl import remoractl


async def test_live_analysis_matches_the_files(k8s) -> None:  # noqa: F811
    code, from_files, _ = await remoractl("analyze", "-f", str(DATA / "mesh.yaml"))
    assert code == 0 and "spec.http[1].mirrors is not implemented yet" in from_files
    code, live, err = await remoractl("analyze", "--kubeconfig", k8s.kubeconfig)
    assert code == 0, err
    assert live == from_files
    assert "not listed: ServiceAccount" in err  # kmock serves only the control plane's kinds


async def test_unreachable_cluster_is_one_line(tmp_path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                   "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                   "current-context: x\n")
    code, _, err = await asyncio.wait_for(remoractl("analyze", "--kubeconfig", str(bad)), 60)
    assert code == 2 and err.startswith("remoractl analyze: cannot list anything from the cluster")
