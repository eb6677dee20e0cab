"""Through the running control plane: a bad edit of a VirtualService is rejected with its field
path and the proxies keep the last good version, synced, with nothing pushed and nothing NACKed."""

from __future__ import annotations

from cp_harness import FakeRuntime, RunningControlPlane, running_client

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
    - match: [{uri: {exact: URI}}]
      timeout: 3s
      route: [{destination: {host: reviews}}]
"""


async def test_a_bad_edit_keeps_the_last_good_virtual_service(control_plane: RunningControlPlane, caplog) -> None:
    cp = control_plane
    rt = FakeRuntime()
    (cp.manifests / "vs.yaml").write_text(VS.replace("URI", "/ok"))
    async with running_client(cp, rt):
        state = lambda: cp.server.connections["reviews-v1.shop"].state  # noqa: E731
        await cp.wait(lambda: rt.configs and rt.configs[-1].outbound[0].routes
                      and "reviews-v1.shop" in cp.server.connections and state().status() == "SYNCED")
        (route,) = rt.configs[-1].outbound[0].routes
        assert (route.matches[0].uri.exact, route.timeout) == ("/ok", 3.0)
        pushed, builds = len(rt.configs), cp.server.metrics["builds"]
        (cp.manifests / "vs.yaml").write_text(VS.replace("URI", "404"))  # a number: Istio rejects it
        await cp.wait(lambda: cp.server.metrics["builds"] > builds)
        assert ("VirtualService/shop/reviews: invalid, keeping the last good version: "
                "spec.http[0].match[0].uri.exact: expected a string, got 404") in caplog.text
        assert len(rt.configs) == pushed and state().status() == "SYNCED"
        # Another change elsewhere rebuilds again: the good version is still the one in force.
        (cp.manifests / "base.yaml").write_text((cp.manifests / "base.yaml").read_text().replace(
            "198.18.0.21", "198.18.0.41"))
        await cp.wait(lambda: len(rt.configs) > pushed)
        assert rt.configs[-1].outbound[0].routes[0].matches[0].uri.exact == "/ok"
        assert state().status() != "ERROR"
