"""A proxy process for the attack tests: the real inbound HTTP/1.1 and HTTP/2 relays on
loopback in front of a recording app, run as its own process so a test can read its RSS.

    python attack_proxy.py   → prints one JSON line {"h1": port, "h2": port, "app": port}

The limits come from the environment (REMORA_*, sidecar/http/limits.py), the HTTP/2 codec
from REMORA_H2_CODEC. The app answers every request ``200 ok`` and counts what reached it;
``GET /__seen`` on its HTTP/1.1 port returns the counts as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import httptools  # noqa: E402

from sidecar import http2  # noqa: E402
from sidecar.http1 import H1Context, H1Downstream, H1Pool  # noqa: E402
from sidecar.stats import INBOUND, Stats  # noqa: E402

SEEN: dict[str, Any] = {"requests": 0, "max_headers": 0, "paths": [], "hosts": []}


def _record(path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    SEEN["requests"] += 1
    SEEN["max_headers"] = max(SEEN["max_headers"], len(headers))
    SEEN["paths"] = (SEEN["paths"] + [path.decode("latin-1")])[-20:]
    hosts = [v.decode("latin-1") for n, v in headers if n.lower() in (b"host", b":authority")]
    SEEN["hosts"] = (SEEN["hosts"] + hosts)[-20:]


class H1App(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        if self.url == b"/__seen":
            body = json.dumps(SEEN).encode()
        else:
            _record(self.url, self.headers)
            body = b"ok"
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


class H2App(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers).get(b":path", b"")
                _record(path, [h for h in ev.headers if not h[0].startswith(b":")
                               or h[0] == b":authority"])
            if isinstance(ev, h2.events.StreamEnded):
                self.conn.send_headers(ev.stream_id, [(b":status", b"200"),
                                                      (b"content-length", b"2")])
                self.conn.send_data(ev.stream_id, b"ok", end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self.transport.write(self.conn.data_to_send())


class PlainConnector:
    async def connect(self, endpoint: Any, alpn: str, protocol_factory: Any,
                      timeout: float = 5.0) -> tuple[Any, Any, None]:
        loop = asyncio.get_running_loop()
        transport, proto = await asyncio.wait_for(
            loop.create_connection(protocol_factory, endpoint.address, endpoint.port), timeout)
        return transport, proto, None


async def main() -> None:
    loop = asyncio.get_running_loop()
    app1 = await loop.create_server(H1App, "127.0.0.1", 0)
    app2 = await loop.create_server(H2App, "127.0.0.1", 0)
    app1_port = app1.sockets[0].getsockname()[1]
    app2_port = app2.sockets[0].getsockname()[1]
    stats, connector = Stats(), PlainConnector()
    h1_ctx = H1Context(INBOUND, connector, H1Pool(stats), stats, lambda: False,  # type: ignore[arg-type]
                       inbound_target=("127.0.0.1", app1_port), service=f"inbound|{app1_port}")
    h2_ctx = http2.H2Context(router=None, outbound_port=None,
                             inbound_target=("127.0.0.1", app2_port),
                             connector=connector, peer_identity=None,  # type: ignore[arg-type]
                             stats=stats, draining=lambda: False,
                             pool=http2.H2Pool(connector))  # type: ignore[arg-type]
    h1 = await loop.create_server(lambda: H1Downstream(h1_ctx), "127.0.0.1", 0)
    h2s = await loop.create_server(lambda: http2.H2Downstream(h2_ctx), "127.0.0.1", 0)
    print(json.dumps({"h1": h1.sockets[0].getsockname()[1], "h2": h2s.sockets[0].getsockname()[1],
                      "app": app1_port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
