"""remoractl proxy-status / proxy-config against a real control plane's monitoring port, and every
live command's one-line answer when there is no control plane to reach."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cp_harness import FakeRuntime, RunningControlPlane, running_client
from kube_kit import CORE, kmock_api, write_kubeconfig

from remoractl.cli import build_parser
from remoractl.target import URL_FLAG, TargetError, resolve

REMORACTL = str(Path(sys.executable).parent / "remoractl")


async def remoractl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        args = build_parser().parse_args(list(argv))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return args.run(args)

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_status_and_config(control_plane: RunningControlPlane) -> None:
    cp = control_plane
    url = ["--control-plane-url", cp.monitoring_url]
    rt = FakeRuntime()
    async with running_client(cp, rt):
        state = lambda: cp.server.connections["reviews-v1.shop"].state  # noqa: E731
        await cp.wait(lambda: "reviews-v1.shop" in cp.server.connections and state().acked)
        code, out, _ = await remoractl("proxy-status", *url)
        assert code == 0
        header, row = out.splitlines()
        assert header.split()[:4] == ["NAME", "STATUS", "SENT", "ACKED"]
        assert row.split()[:2] == ["reviews-v1.shop", "SYNCED"]
        # Fields Remora does not implement show up in the status detail too.
        (cp.manifests / "dr.yaml").write_text(
            "kind: DestinationRule\nmetadata: {name: r, namespace: shop}\n"
            "spec: {host: reviews, trafficPolicy: {tls: {mode: SIMPLE}}}\n")
        await cp.wait(lambda: state().acked and state().acked.config.unsupported)
        code, out, _ = await remoractl("proxy-status", *url)
        assert "1 configuration field(s) not implemented yet" in out
        assert "DestinationRule/shop/r: spec.trafficPolicy.tls.mode SIMPLE is not implemented yet" in out
        code, out, _ = await remoractl("proxy-config", "reviews-v1", "-n", "shop", *url)
        assert code == 0
        assert "198.19.0.10:9080 http -> reviews.shop.svc.cluster.local" in out
        assert "reviews.shop.svc.cluster.local|9080: 198.18.0.21:8080" in out
        code, _, err = await remoractl("proxy-config", "ghost.shop", *url)
        assert code == 1 and "no connected proxy 'ghost.shop'" in err


def live_commands() -> dict[str, list[str]]:
    """Every subcommand that talks to a control plane (it takes --control-plane-url), with
    placeholder values for its positional arguments."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = {}
    for name, p in sub.choices.items():
        if any(URL_FLAG in a.option_strings for a in p._actions):
            found[name] = ["x" for a in p._actions if not a.option_strings and a.nargs not in ("?", "*")]
    return found


def test_the_live_commands_are_found() -> None:
    assert {"proxy-status", "proxy-config", "version", "check", "upgrade", "stat", "dashboard"} \
        <= set(live_commands())


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REMORACTL, *argv], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


# Diagnostics print their findings on stdout even when the control plane cannot be reached; the
# one line on stderr still says why.
DIAGNOSTICS = {"check"}


def assert_one_line(res: subprocess.CompletedProcess[str], *expect: str) -> None:
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr + res.stdout, res
    if res.args[1] in DIAGNOSTICS:
        assert "\u2716 control plane ready" in res.stdout, res
    else:
        assert res.stdout == "", res
    (line,) = res.stderr.splitlines()
    for text in expect:
        assert text in line, line


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment with no local cluster and no kubeconfig."""
    home = tmp_path_factory.mktemp("home")
    return {"REMORA_LOCAL_DIR": str(home / "no-cluster"), "KUBECONFIG": "", "HOME": str(home)}


@pytest.mark.parametrize("command", sorted(live_commands()))
def test_each_live_command_against_an_unreachable_target_is_one_line(
    command: str, nowhere: dict[str, str], tmp_path: Path
) -> None:
    args = [command, *live_commands()[command]]
    port = closed_port()
    assert_one_line(run_cli(*args, URL_FLAG, f"http://127.0.0.1:{port}"),
                    f"cannot reach the control plane at 127.0.0.1:{port}: Connection refused")
    assert_one_line(run_cli(*args, URL_FLAG, "http://[::1"), "is not an address such as")
    assert_one_line(run_cli(*args, env=nowhere), "no control plane to talk to", "remoractl local up")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    assert_one_line(run_cli(*args, "--kubeconfig", str(kubeconfig), env=nowhere),
                    f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}")
    assert_one_line(run_cli(*args, "--kubeconfig", str(kubeconfig), "--context", "prod", env=nowhere),
                    "kubeconfig", "prod")


async def test_kubeconfig_target_without_a_control_plane_pod_says_so(tmp_path: Path) -> None:
    async with kmock_api(tmp_path, CORE) as api:
        kube = RemoraKubeArgs(api.kubeconfig)
        with pytest.raises(TargetError, match="no running remora-control pod in namespace remora-system"):
            await asyncio.to_thread(resolve, kube)
        # A running pod with the chart's labels is the one port-forwarded to.
        api.add("v1/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "remora-control-7d9f", "namespace": "remora-system",
            "labels": {"app.kubernetes.io/name": "remora", "app.kubernetes.io/component": "control-plane"}},
            "status": {"phase": "Running"}})
        target = await asyncio.to_thread(resolve, kube)
        assert target.where.startswith("remora-control pod remora-system/remora-control-7d9f")
        # kmock cannot port-forward (no WebSocket upgrade): the failure is still one clear line.
        with pytest.raises(TargetError, match="cannot port-forward to pod remora-system/remora-control-7d9f") \
                as failed:
            await asyncio.to_thread(target.get, "/debug/proxies")
        assert "\n" not in str(failed.value) and len(str(failed.value)) < 300


@dataclass
class RemoraKubeArgs:
    kubeconfig: str
    context: str | None = "kmock"
    control_plane_url: str | None = None
    control_plane_namespace: str = "remora-system"


@pytest.mark.root
def test_a_user_who_cannot_read_the_local_cluster_is_told_why(tmp_path: Path) -> None:
    state = tmp_path / "private" / "state"
    state.mkdir(parents=True)
    (state / "daemon.sock").touch()
    (tmp_path / "private").chmod(0o700)  # as /var/lib/remora/local is: root's
    tmp_path.chmod(0o755)
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REMORACTL,
                          "proxy-status"], capture_output=True, text=True, timeout=30, cwd="/",
                         env={**os.environ, "REMORA_LOCAL_DIR": str(state), "KUBECONFIG": ""})
    if "Permission denied" in res.stderr and "remoractl" not in res.stderr:
        pytest.skip("uid 65534 cannot run this virtualenv here")
    assert_one_line(res, "cannot read the local cluster's state directory", "run remoractl as root")
