"""A small RFC 6455 WebSocket client on asyncio streams (standard library only).

The proxy must stay small in memory, so it does not import aiohttp for its one long-lived
control-plane stream. Supported: client handshake, masked text frames, fragmented messages,
ping/pong, close. Not supported (not needed): extensions (no compression), subprotocols.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 * 1024 * 1024


class WebSocketError(ConnectionError):
    """The handshake failed, the peer broke the protocol, or the stream closed."""


class WebSocketClosed(WebSocketError):
    """The peer closed the stream (``code`` and ``reason`` from its close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by peer: {code} {reason}".strip())
        self.code = code
        self.reason = reason


def _accept_key(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()


def _mask(payload: bytes, key: bytes) -> bytes:
    # XOR by whole integers: much faster than a per-byte loop for large snapshots.
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, mask: bool = True) -> bytes:
    """One final frame (clients must mask, RFC 6455 section 5.3)."""
    head = bytearray([0x80 | opcode])
    mbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _mask(payload, key)


class WebSocket:
    """One client connection; ``recv`` answers pings itself and returns text/binary messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._send_lock = asyncio.Lock()
        self.closed = False

    @property
    def transport(self) -> asyncio.Transport:
        return self._writer.transport  # type: ignore[return-value]

    async def send_text(self, text: str) -> None:
        await self._send(OP_TEXT, text.encode())

    async def ping(self, data: bytes = b"") -> None:
        await self._send(OP_PING, data)

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            raise WebSocketError("stream is closed")
        async with self._send_lock:
            self._writer.write(encode_frame(opcode, payload))
            await self._writer.drain()

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self._reader.readexactly(2)
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if b0 & 0x70:
            raise WebSocketError("peer set reserved bits (no extension was negotiated)")
        if n == 126:
            (n,) = struct.unpack("!H", await self._reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self._reader.readexactly(8))
        if n > MAX_MESSAGE:
            raise WebSocketError(f"frame of {n} bytes exceeds the {MAX_MESSAGE} byte limit")
        key = await self._reader.readexactly(4) if masked else b""
        payload = await self._reader.readexactly(n)
        return fin, opcode, _mask(payload, key) if masked else payload

    async def _frame(self, idle_timeout: float | None) -> tuple[bool, int, bytes]:
        if idle_timeout is None:
            return await self._read_frame()
        try:
            return await asyncio.wait_for(self._read_frame(), idle_timeout)
        except TimeoutError:
            self.closed = True
            raise WebSocketError(f"nothing received for {idle_timeout:g}s (no message and no "
                                 "keep-alive ping): the stream is dead") from None

    async def recv(self, idle_timeout: float | None = None) -> str | bytes:
        """The next data message; raises WebSocketClosed / WebSocketError when the stream ends.
        ``idle_timeout``: the longest silence allowed between frames of any kind, pings
        included, so a quiet but healthy stream is never taken for a dead one."""
        parts: list[bytes] = []
        first_op = None
        try:
            while True:
                fin, op, payload = await self._frame(idle_timeout)
                if op == OP_PING:
                    await self._send(OP_PONG, payload)
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    await self._close_transport(reply=True)
                    raise WebSocketClosed(code, payload[2:].decode(errors="replace"))
                if op in (OP_TEXT, OP_BINARY):
                    first_op, parts = op, [payload]
                elif op == OP_CONT and first_op is not None:
                    parts.append(payload)
                else:
                    raise WebSocketError(f"unexpected opcode {op:#x}")
                if sum(map(len, parts)) > MAX_MESSAGE:
                    raise WebSocketError("message exceeds the size limit")
                if fin:
                    data = b"".join(parts)
                    return data.decode() if first_op == OP_TEXT else data
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            self.closed = True
            if isinstance(exc, WebSocketError):
                raise
            raise WebSocketError(f"connection lost: {exc!r}") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            with contextlib.suppress(ConnectionError, WebSocketError, ssl.SSLError):
                await self._send(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        await self._close_transport()

    async def _close_transport(self, reply: bool = False) -> None:
        if reply and not self.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(encode_frame(OP_CLOSE, b""))
        self.closed = True
        self._writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError, OSError):
            await asyncio.wait_for(self._writer.wait_closed(), 2)


async def connect(
    host: str,
    port: int,
    path: str,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> WebSocket:
    """Open a TCP (+TLS) connection and perform the WebSocket upgrade."""
    async def _open() -> WebSocket:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname if ssl_context else None,
            limit=2**20,
        )
        try:
            key = base64.b64encode(os.urandom(16))
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            lines = [
                f"GET {path} HTTP/1.1", f"Host: {hostport}", "Upgrade: websocket",
                "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
                "Sec-WebSocket-Version: 13",
                *(f"{k}: {v}" for k, v in (headers or {}).items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status, *header_lines = head.decode("latin-1").split("\r\n")
            if not status.startswith("HTTP/1.1 101"):
                raise WebSocketError(f"upgrade refused: {status}")
            got = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in header_lines if h)
            }
            if got.get("sec-websocket-accept") != _accept_key(key):
                raise WebSocketError("upgrade answer has a wrong Sec-WebSocket-Accept")
            return WebSocket(reader, writer)
        except BaseException:
            writer.close()
            raise

    try:
        return await asyncio.wait_for(_open(), timeout)
    except asyncio.IncompleteReadError:
        raise WebSocketError("connection closed during the upgrade") from None
