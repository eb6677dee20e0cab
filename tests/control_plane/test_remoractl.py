"""remoractl proxy-status / proxy-config against a real control plane's monitoring port."""

from __future__ import annotations

import asyncio
import contextlib
import io

from cp_harness import FakeRuntime, RunningControlPlane, running_client

from remoractl.cli import build_parser


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


async def test_unreachable_control_plane_is_one_clear_line() -> None:
    try:
        await remoractl("proxy-status", "--control-plane-url", "http://127.0.0.1:9")
    except SystemExit as exc:
        assert "cannot reach the control plane at http://127.0.0.1:9" in str(exc)
    else:
        raise AssertionError("expected SystemExit")
