"""The HTTP/1.1 relay's response heads, route deadline and retries on loopback (no root).

A response head the relay has no rule for goes on byte for byte as the app wrote it (no
re-serialisation); one with hop-by-hop headers, an HTTP/1.0 status line or split across reads
still comes out right; a response nobody asked for never reaches a later request. The route
timeout is one deadline per exchange on a connection-long timer: it still fires for a slow
request after fast ones on the same connection, and never for a fast one. A connection that
reuses its first request's target (a port with one endpoint and no route) still retries its
later requests as Istio's default retry policy says.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from test_traffic_relay import BOOKINFO, config, loopback_only, mesh, seen  # noqa: F401 (mesh: fixture)
from traffic_harness import Harness

from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.stats import INBOUND, Stats
from sidecar.upstream import Connector

PLAIN = b"HTTP/1.1 200 OK\r\nServer: app/1\r\nX-Mixed-Case:  two  spaces \r\nContent-Length: 2\r\n\r\nok"
# What the app answers per request path: the raw bytes, written in these pieces.
ANSWERS: dict[bytes, list[bytes]] = {
    b"/plain": [PLAIN],
    b"/keepalive": [b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"],
    b"/hop": [b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
              b"X-A: 1\r\nContent-Length: 2\r\n\r\nok"],
    b"/http10": [b"HTTP/1.0 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"],
    b"/split": [b"HTTP/1.1 200 OK\r\nX-A: 1\r", b"\nX-B: 2\r\nContent-Le", b"ngth: 2\r\n\r", b"\nok"],
    b"/interim": [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + PLAIN],
    b"/twice": [PLAIN + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"],
}


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for piece in ANSWERS[head.split(b" ")[1]]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)  # each piece its own read at the relay
    writer.close()


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def get(self, path: str) -> bytes:
        """The response head and its 2-byte body as the client received them."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        if head.startswith(b"HTTP/1.1 1"):  # an interim response: the final one follows
            head += await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        return head + await asyncio.wait_for(self.reader.readexactly(2), 5)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    server = await asyncio.start_server(app, "127.0.0.1", 0)
    stats = Stats()
    ctx = H1Context(INBOUND, Connector(lambda: None, stats), H1Pool(stats), stats, lambda: False,
                    inbound_target=("127.0.0.1", server.sockets[0].getsockname()[1]),
                    service="inbound|app")
    relay = await asyncio.get_running_loop().create_server(lambda: H1Downstream(ctx), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.sockets[0].getsockname()[1])
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        relay.close()
        server.close()
        ctx.pool.close_all()


async def test_a_head_without_rules_goes_on_byte_for_byte(client: Client) -> None:
    assert await client.get("/plain") == PLAIN
    assert await client.get("/split") == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 2\r\n\r\nok"


async def test_connection_keep_alive_is_dropped_and_the_rest_kept(client: Client) -> None:
    assert await client.get("/keepalive") == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"


async def test_hop_by_hop_headers_are_removed(client: Client) -> None:
    got = await client.get("/hop")
    assert got == b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nok"


async def test_an_http10_status_line_is_rebuilt_as_http11(client: Client) -> None:
    assert await client.get("/http10") == b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nok"


async def test_an_interim_response_then_the_final_one_from_one_read(client: Client) -> None:
    got = await client.get("/interim")
    assert got == b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + PLAIN


async def test_a_response_nobody_asked_for_never_answers_a_later_request(client: Client) -> None:
    assert await client.get("/twice") == PLAIN
    await asyncio.sleep(0.1)
    assert await client.get("/plain") == PLAIN  # not the stale second response


@loopback_only  # reaches into the relay's listener (Harness.port)
def test_route_timeout_per_exchange_on_one_connection(mesh: Harness) -> None:  # noqa: F811
    """reviews has a 0.5 s timeout. On one connection: 0.3 s requests pass one after another
    (each has its own deadline, though the timer is the connection's), a 2 s one gets 504 at
    0.5 s, and the next request is timed from its own start again."""
    mesh.apply(config(*BOOKINFO, "request-timeouts.yaml"))
    paths = ["/delay/0.3", "/delay/0.3", "/delay/0.3", "/delay/2", "/delay/0.3"]
    t = time.monotonic()
    got = _one_connection(mesh, "reviews", 9080, paths)
    took = time.monotonic() - t
    assert [code for code, _ in got] == ["200", "200", "200", "504", "200"]
    assert sum(int(n) for _, n in got) == 1  # all on one connection
    assert 1.6 <= took < 2.4


def _one_connection(h: Harness, service: str, number: int, paths: list[str]) -> list[list[str]]:
    """[status, connects] per path, all requested by one curl on one keep-alive connection."""
    port = h.port(h.vip(service, number), number, "h1")
    out = subprocess.run(["curl", "-s", "--http1.1", "--max-time", "10", "-H", f"host: {service}:{number}",
                          "-w", "\n###%{http_code}###%{num_connects}\n",
                          *[f"http://127.0.0.1:{port}{p}" for p in paths]],
                         capture_output=True, text=True, timeout=20).stdout
    return [line.split("###")[1:] for line in out.splitlines() if line.startswith("###")]


@loopback_only  # reaches into the relay's listener (Harness.port)
def test_default_retries_on_a_connections_later_requests(mesh: Harness) -> None:  # noqa: F811
    """details: one endpoint, no route, so a connection keeps its first request's target. A 503
    on its third request is retried twice (Istio's default: retriable-status-codes 503), like
    on a first request; a 404 is not retried."""
    mesh.apply(config(*BOOKINFO))
    mesh.reset()
    got = _one_connection(mesh, "details", 9080, ["/", "/", "/status/503", "/status/404", "/"])
    assert got == [["200", "1"], ["200", "0"], ["503", "0"], ["404", "0"], ["200", "0"]]
    assert [s.path for s in seen(mesh, "198.18.1.11")] == ["/", "/", *["/status/503"] * 3,
                                                           "/status/404", "/"]
