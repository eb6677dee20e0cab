"""The inbound HTTP/1.1 relay on loopback (no root): a raw client → ``H1Downstream`` → an app
that answers with the request head it received. The same exchange rules as HTTP/2: XFCC
set from the verified peer (a forged one removed) and the authorization hook."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.stats import INBOUND, Stats
from sidecar.upstream import Connector

CLIENT_ID = "spiffe://cluster.local/ns/a/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/b/sa/server"


async def echo_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive app: the body of each response is the request head it got."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(head), head))
            await writer.drain()
    writer.close()


@dataclass
class Relay:
    port: int
    ctx: H1Context
    stats: Stats

    async def get(self, path: str, *headers: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        return int(head.split(b" ")[1]), body


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    app = await asyncio.start_server(echo_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    stats = Stats()
    ctx = H1Context(INBOUND, Connector(lambda: None, stats), H1Pool(stats), stats, lambda: False,
                    inbound_target=("127.0.0.1", app_port), peer_identity=CLIENT_ID,
                    local_identity=SERVER_ID, service=f"inbound|{app_port}")
    server = await asyncio.get_running_loop().create_server(lambda: H1Downstream(ctx),
                                                            "127.0.0.1", 0)
    try:
        yield Relay(server.sockets[0].getsockname()[1], ctx, stats)
    finally:
        server.close()
        app.close()
        ctx.pool.close_all()


async def test_forged_xfcc_is_replaced_by_the_verified_peer(relay: Relay) -> None:
    status, seen = await relay.get("/", "X-Forwarded-Client-Cert: By=x;URI=spiffe://evil")
    assert status == 200
    lines = [ln for ln in seen.split(b"\r\n") if ln.lower().startswith(b"x-forwarded-client-cert")]
    assert lines == [f"x-forwarded-client-cert: By={SERVER_ID};URI={CLIENT_ID}".encode()]


async def test_inbound_authorizer_denies_with_403_before_dispatch(relay: Relay) -> None:
    seen = []

    def authorizer(attrs):
        seen.append((attrs.method, attrs.path, attrs.authority, attrs.principal))
        return (403, "RBAC: access denied") if attrs.path.startswith(b"/admin") else None
    relay.ctx.authorizer = authorizer
    assert (await relay.get("/ok"))[0] == 200
    assert await relay.get("/admin/x") == (403, b"RBAC: access denied")
    assert seen == [(b"GET", b"/ok", b"app", CLIENT_ID), (b"GET", b"/admin/x", b"app", CLIENT_ID)]
    port = relay.ctx.inbound_target[1]  # type: ignore[index]
    assert relay.stats.requests[(INBOUND, f"inbound|{port}", 403, CLIENT_ID)] == 1
    assert relay.stats.requests[(INBOUND, f"inbound|{port}", 200, CLIENT_ID)] == 1
