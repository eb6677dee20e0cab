"""DestinationRule ``connectionPool.http.idleTimeout``, per cluster, on both upstream pools.

From Istio YAML through the control plane's snapshot (and its JSON wire form) into a real
Router and the real outbound relays (tests/sidecar/traffic_harness.py, loopback, no root):
an upstream connection left idle is closed after its cluster's idleTimeout, which overrides
the proxy-wide ``upstreamIdleTimeout`` (here 30 s); over HTTP/2 the app first gets a GOAWAY.
Each app watches its own connections, so the close is observed where it happens. The HTTP/1.1
relay runs once; the HTTP/2 relay once per codec (nghttp2, h2).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import h2.events
import pytest
import yaml
from codec_select import selected
from traffic_harness import App, Harness, _AppProtocol

from control_plane.api import skew
from control_plane.api.model import ProxyConfig
from control_plane.builder import ProxyKey, SnapshotBuilder
from control_plane.registry import Registry
from control_plane.resources import key_of
from sidecar.http import limits

IDLE = 1.0
YAML = """
apiVersion: v1
kind: Service
metadata: {name: short, namespace: default}
spec: {clusterIP: 198.19.4.1, selector: {app: short}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: long, namespace: default}
spec: {clusterIP: 198.19.4.2, selector: {app: long}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: short-1, namespace: default, labels: {app: short}, annotations: {remora.dev/status: "{}"}}
spec: {serviceAccountName: short}
status: {podIP: 198.18.4.11}
---
apiVersion: v1
kind: Pod
metadata: {name: long-1, namespace: default, labels: {app: long}, annotations: {remora.dev/status: "{}"}}
spec: {serviceAccountName: long}
status: {podIP: 198.18.4.12}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}, annotations: {remora.dev/status: "{}"}}
spec: {serviceAccountName: client}
status: {podIP: 198.18.4.20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: short, namespace: default}
spec:
  host: short
  trafficPolicy: {connectionPool: {http: {idleTimeout: 1s}}}
"""


def snapshot() -> ProxyConfig:
    objs = [d for d in yaml.safe_load_all(YAML) if d]
    reg = Registry.from_objects({key_of(o): o for o in objs}.values())
    assert reg.errors == []
    cfg = SnapshotBuilder(reg, "cluster.local", "ROOTS\n").snapshot_for(ProxyKey("default", "client")).config
    return ProxyConfig.from_dict(cfg.to_dict())  # what a proxy decodes off the wire


def test_idle_timeout_crosses_the_wire_and_is_pruned_for_strict_proxies() -> None:
    cfg = snapshot()
    idle = {c.service.split(".")[0]: c.policy.connection_pool.idle_timeout for c in cfg.clusters}
    assert idle == {"short": IDLE, "long": None}
    old = skew.prune(cfg.to_dict(), skew.strict_shape_for("0.1.0"))  # 0.1 knows no policy
    assert all("policy" not in c for c in old["clusters"])


class WatchedApp(_AppProtocol):
    """The harness's app (HTTP/1.1 and h2c), which also records when its connections close
    and whether the proxy sent a GOAWAY first."""

    log: list[dict[str, Any]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.rec: dict[str, Any] = {"app": self.app.name, "closed": None, "goaway": False}
        WatchedApp.log.append(self.rec)

    def h2_data(self, data: bytes) -> None:
        assert self.h2 is not None
        receive = self.h2.receive_data

        def watch(d: bytes) -> list:
            events = receive(d)
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                self.rec["goaway"] = True
            return events
        self.h2.receive_data = watch  # type: ignore[method-assign]
        try:
            super().h2_data(data)
        finally:
            self.h2.receive_data = receive  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.rec["closed"] = time.monotonic()


@pytest.fixture(scope="module")
def mesh() -> Iterator[Harness]:
    limits.configure(limits.Limits(upstream_idle_timeout=30.0))  # the proxy-wide default
    h = Harness()
    for addr, name in (("198.18.4.11", "short"), ("198.18.4.12", "long")):
        app = App(name)

        async def start(app: App = app) -> None:
            srv = await h.loop.create_server(lambda: WatchedApp(app), "127.0.0.1", 0)
            app.port = srv.sockets[0].getsockname()[1]
            h.servers.append(srv)
        h.run(start())
        h.apps[addr] = app
    h.apply(snapshot())
    try:
        yield h
    finally:
        h.close()
        limits.configure(None)


@pytest.fixture(params=["h1", "nghttp2", "h2"])
def relay(request) -> Iterator[str]:
    if request.param == "h1":
        yield "h1"
        return
    with selected(request.param):
        yield "h2"


def test_an_idle_upstream_connection_closes_after_its_clusters_idle_timeout(mesh, relay):
    WatchedApp.log = []
    assert [c for c, _ in mesh.curl(relay, "short", 8000, "/")] == [200]
    assert [c for c, _ in mesh.curl(relay, "long", 8000, "/")] == [200]
    done = time.monotonic()
    short = [r for r in WatchedApp.log if r["app"] == "short"]
    long_ = [r for r in WatchedApp.log if r["app"] == "long"]
    assert len(short) == 1 and len(long_) == 1, WatchedApp.log
    assert mesh.wait(lambda: short[0]["closed"] is not None, IDLE + 3)
    assert IDLE * 0.7 < short[0]["closed"] - done < IDLE + 2, short[0]["closed"] - done
    if relay == "h2":
        assert short[0]["goaway"], "HTTP/2: GOAWAY before the close"
    # The cluster without idleTimeout keeps the proxy-wide 30 s: still open, and reused.
    time.sleep(max(0.0, done + IDLE * 2 - time.monotonic()))
    assert long_[0]["closed"] is None
    assert [c for c, _ in mesh.curl(relay, "long", 8000, "/")] == [200]
    assert len([r for r in WatchedApp.log if r["app"] == "long"]) == 1
    # A request after the close opens a new connection, which idles out the same way.
    assert [c for c, _ in mesh.curl(relay, "short", 8000, "/")] == [200]
    again = [r for r in WatchedApp.log if r["app"] == "short"]
    assert len(again) == 2
    assert mesh.wait(lambda: again[1]["closed"] is not None, IDLE + 3)
    mesh.call(mesh.h2_pool.close)
    mesh.call(mesh.h1_pool.close_all)
