"""Test apps run inside pods (as uid 1000): an aiohttp HTTP/WebSocket server and a
server-first line protocol (greets on connect, like SMTP/MySQL).

    python apps.py http PORT
    python apps.py greet PORT
    python apps.py upper PORT   (reads until EOF, then answers the bytes upper-cased and closes)
    python apps.py sniff IFACE OUTFILE SECONDS   (root: raw frames of IFACE appended to OUTFILE)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time

from aiohttp import WSMsgType, web


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello from server\n")


async def upload(request: web.Request) -> web.Response:
    """Consume the body as a stream; answer its size and sha256 (never holds it whole)."""
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        n += len(chunk)
        h.update(chunk)
    return web.json_response({"bytes": n, "sha256": h.hexdigest(),
                              "chunked": request.headers.get("Transfer-Encoding", "")})


async def headers(request: web.Request) -> web.Response:
    # The request headers, and under "_remote" the address the connection came from.
    return web.json_response({**{k.lower(): v for k, v in request.headers.items()},
                              "_remote": request.remote})


async def stream(request: web.Request) -> web.StreamResponse:
    """A chunked response written in three pieces."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(3):
        await resp.write(f"part{i};".encode())
        await asyncio.sleep(0.01)
    await resp.write_eof()
    return resp


async def big(request: web.Request) -> web.StreamResponse:
    """``mb`` MiB of zeros, written as fast as the connection takes them."""
    resp = web.StreamResponse()
    resp.content_length = int(request.query.get("mb", "20")) << 20
    await resp.prepare(request)
    chunk = bytes(1 << 20)
    for _ in range(resp.content_length >> 20):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.Response(text="slow done\n")


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 greeter ready\r\n")
    await writer.drain()
    while line := await reader.readline():
        writer.write(b"250 " + line)
        await writer.drain()
        if line.strip() == b"QUIT":
            break
    writer.close()


async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the client's FIN: needs half-close to cross the mesh
    writer.write(data.upper())
    await writer.drain()
    writer.close()


def sniff(iface: str, path: str, seconds: float) -> None:
    """A packet capture without tcpdump: every frame on ``iface`` for ``seconds``."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    with open(path, "wb") as out:
        print("sniffing", flush=True)
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                out.write(s.recv(65536))
            out.flush()


def main() -> None:
    mode = sys.argv[1]
    if mode == "sniff":
        sniff(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    port = int(sys.argv[2])
    if mode == "http":
        app = web.Application(client_max_size=1 << 30)
        app.add_routes([web.get("/", hello), web.post("/upload", upload),
                        web.get("/headers", headers), web.get("/slow", slow), web.get("/ws", ws),
                        web.get("/stream", stream), web.get("/big", big)])
        web.run_app(app, host=["0.0.0.0", "::"], port=port, print=None, access_log=None)
    elif mode in ("greet", "upper"):
        async def run() -> None:
            server = await asyncio.start_server(greet if mode == "greet" else upper, ["0.0.0.0", "::"], port)
            await server.serve_forever()
        asyncio.run(run())
    else:
        print(json.dumps({"error": f"unknown mode {mode}"}))
        sys.exit(2)


if __name__ == "__main__":
    main()
