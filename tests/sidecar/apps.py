"""Test apps run inside pods (as uid 1000): an aiohttp HTTP/WebSocket server and a
server-first line protocol (greets on connect, like SMTP/MySQL).

    python apps.py http PORT
    python apps.py greet PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

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
    return web.json_response({k.lower(): v for k, v in request.headers.items()})


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


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "http":
        app = web.Application(client_max_size=1 << 30)
        app.add_routes([web.get("/", hello), web.post("/upload", upload),
                        web.get("/headers", headers), web.get("/slow", slow), web.get("/ws", ws)])
        web.run_app(app, host="0.0.0.0", port=port, print=None, access_log=None)
    elif mode == "greet":
        async def run() -> None:
            server = await asyncio.start_server(greet, "0.0.0.0", port)
            await server.serve_forever()
        asyncio.run(run())
    else:
        print(json.dumps({"error": f"unknown mode {mode}"}))
        sys.exit(2)


if __name__ == "__main__":
    main()
