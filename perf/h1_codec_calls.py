"""Python calls per request of a minimal HTTP/1.1 relay loop on the sans-IO codecs.

    python perf/h1_codec_calls.py [N]

The same measurement as ``perf/h1_calls.py`` (cProfile, uvloop, app and client in child
processes, N keep-alive GETs), but the relay is the smallest loop that runs on the codec
events of ``sidecar/http/h1.py`` with the shared header policy and exchange: GET only,
one pooled upstream connection, no timeouts, upgrades, bodies or error paths. It is a
lower bound for a full relay on the codecs, to compare with the production relay
(``sidecar/http1.py``) before moving HTTP/1.1 onto them (docs/proxy.md "Decisions").
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import h1_calls  # the app, the client and the profiling harness

from sidecar.http import events as ev
from sidecar.http.exchange import Exchange, decide_outbound
from sidecar.http.h1 import H1ClientCodec, H1ServerCodec
from sidecar.http.headers import request_headers, response_headers


class Up(asyncio.Protocol):
    def __init__(self) -> None:
        self.codec = H1ClientCodec()
        self.down: Down | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        down = self.down
        assert down is not None
        codec = down.codec
        sid = down.sid
        for e in self.codec.feed(data):
            t = type(e)
            if t is ev.ResponseHead:
                codec.send_response_head(sid, e.status, response_headers(e.headers),  # type: ignore[attr-defined]
                                         e.end_stream, e.reason)  # type: ignore[attr-defined]
            elif t is ev.Data:
                codec.send_data(sid, e.data)  # type: ignore[attr-defined]
            elif t is ev.EndOfMessage:
                codec.send_end(sid)
                down.done(200)
        down.flush()


class Down(asyncio.Protocol):
    idle: list[Up] = []  # the upstream pool, reduced to a shared stack

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.codec = H1ServerCodec()
        self.ex = Exchange(ctx)
        self.up: Up | None = None
        self.sid = 0
        self.decision: Any = None  # cached like the production relay's fixed target
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for e in self.codec.feed(data):
            if type(e) is ev.RequestHead:
                self.head(e)  # type: ignore[arg-type]
        self.flush()

    def head(self, head: ev.RequestHead) -> None:
        ctx = self.ctx
        head.headers = request_headers(head.headers, False, None)
        self.codec.start_response(head)
        self.sid = head.stream_id
        ex = self.ex
        ex.service, ex.peer, ex.started, ex.finished = ctx.service, None, 0.0, False
        d = self.decision
        if d is None:
            d = decide_outbound(ctx, head.method, head.path, head.headers)
            if ctx.router.is_fixed(ctx.outbound_port):
                self.decision = d
        if not self.idle:
            asyncio.get_running_loop().create_task(self.connect(d.endpoint, head))
            return
        self.attach(self.idle.pop(), head)

    async def connect(self, endpoint: Any, head: ev.RequestHead) -> None:
        _, up, _ = await self.ctx.connector.connect(endpoint, "http/1.1", Up, 5.0)
        self.attach(up, head)
        self.flush()

    def attach(self, up: Up, head: ev.RequestHead) -> None:
        up.down = self
        self.up = up
        up.codec.send_request_head(head)

    def done(self, status: int) -> None:
        self.ex.done(status)
        if self.up is not None:
            self.idle.append(self.up)
        self.up = None

    def flush(self) -> None:
        out = self.codec.data_to_send()
        if out:
            self.transport.write(out)
        up = self.up
        if up is not None:
            out = up.codec.data_to_send()
            if out:
                up.transport.write(out)


if __name__ == "__main__":
    import json
    import socket

    import uvloop

    h1_calls.H1Downstream = Down  # type: ignore[misc,assignment]  # the relay under test
    socket.setdefaulttimeout(10)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(json.dumps(uvloop.run(h1_calls.main(n))))
