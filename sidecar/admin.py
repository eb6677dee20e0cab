"""A tiny HTTP/1.1 server on httptools for the proxy's own endpoints (admin, agent, health,
metrics). One request per connection; small bodies only; no aiohttp in the proxy process."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import httptools

log = logging.getLogger("remora.admin")
MAX_REQUEST = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}

# handler(method, path, query) -> (status, content type, body)
Reply = tuple[int, str, bytes]
Handler = Callable[[str, str, dict[str, list[str]]], Reply | Awaitable[Reply]]


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.size = 0
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.handled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_REQUEST:
            self._send(400, "text/plain", b"request too large\n")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, "text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.handled:
            return
        self.handled = True
        method = self.parser.get_method().decode()
        parts = urlsplit(self.url.decode("latin-1"))
        asyncio.get_running_loop().create_task(self._run(method, parts.path, parse_qs(parts.query)))

    async def _run(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        try:
            result = self.handler(method, path, query)
            if inspect.isawaitable(result):
                result = await result
            status, ctype, body = result
        except Exception:
            log.exception("admin handler for %s %s failed", method, path)
            status, ctype, body = 500, "text/plain", b"internal error\n"
        self._send(status, ctype, body)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        if self.transport.is_closing():
            return
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()


async def serve(host: str, port: int, handler: Handler) -> asyncio.base_events.Server:
    """Listen on host:port ("::" = dual-stack, falling back to 0.0.0.0)."""
    from .listeners import bind

    sock = bind(host, port, backlog=128)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _AdminProtocol(handler), sock=sock)
