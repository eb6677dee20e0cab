"""Clients for the attack tests: raw HTTP/1.1 bytes, hand-made HTTP/2 frames (hyperframe,
hpack), a normal h2 request, and the proxy process under attack (attack_proxy.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

HERE = Path(__file__).resolve().parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Proxy:
    proc: subprocess.Popen[str]
    h1: int
    h2: int
    app: int

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def seen(self) -> dict:
        """What reached the app so far (its own counters, read directly)."""
        out = h1_exchange(self.app, b"GET /__seen HTTP/1.1\r\nHost: app\r\n\r\n")
        return json.loads(out.split(b"\r\n\r\n", 1)[1])

    def alive(self) -> None:
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def start_proxy(env: dict[str, str]) -> Proxy:
    proc = subprocess.Popen([sys.executable, str(HERE / "attack_proxy.py")], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"attack proxy did not start: {proc.communicate()[1]}")
    ports = json.loads(line)
    return Proxy(proc, ports["h1"], ports["h2"], ports["app"])


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_close(s: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (or ``limit`` seconds: then AssertionError)."""
    out = bytearray()
    deadline = time.monotonic() + limit
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"connection still open after {limit}s; got {bytes(out[:300])!r}") from None
        except ConnectionResetError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def h1_exchange(port: int, request: bytes, limit: float = 5.0) -> bytes:
    """Send ``request`` and read one response (content-length framed) or until close."""
    with connect(port) as s:
        s.sendall(request)
        out = bytearray()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            head, sep, body = bytes(out).partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return bytes(out)
        return bytes(out)


def h1_ok(port: int) -> None:
    """A normal request gets the app's answer."""
    out = h1_exchange(port, b"GET /normal HTTP/1.1\r\nHost: app\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"ok"), out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


# -- HTTP/2 ----------------------------------------------------------------------------

def frame_bytes(frame: Frame) -> bytes:
    return bytes(frame.serialize())


def request_block(enc: Encoder, path: bytes = b"/", method: bytes = b"GET",
                  authority: bytes | None = b"app", extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    headers = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
    if method == b"CONNECT":
        headers = [(b":method", method)]
    if authority is not None:
        headers.append((b":authority", authority))
    return bytes(enc.encode(headers + (extra or [])))


class RawH2:
    """A connection that writes frames the test makes and reads what comes back."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.enc = Encoder()
        self.buf = bytearray()
        self.sock.sendall(PREFACE + frame_bytes(SettingsFrame(0)))

    def send(self, *frames: Frame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else frame_bytes(f) for f in frames))

    def headers(self, sid: int, end: bool = True, **kw: object) -> HeadersFrame:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return HeadersFrame(sid, request_block(self.enc, **kw), flags=flags)  # type: ignore[arg-type]

    def frames(self, limit: float = 3.0) -> tuple[list[Frame], bool]:
        """Frames read within ``limit`` s, and whether the proxy closed the connection."""
        out: list[Frame] = []
        deadline = time.monotonic() + limit
        closed = False
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(262144)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self.buf += chunk
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                del self.buf[:9 + length]
                out.append(frame)
        return out, closed

    def until(self, done: Callable[[list[Frame]], bool], limit: float = 3.0) -> tuple[list[Frame], bool]:
        """Frames until ``done(frames)`` holds, the proxy closes, or ``limit`` s pass."""
        got: list[Frame] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            frames, closed = self.frames(0.05)
            got += frames
            if closed or done(got):
                return got, closed
        return got, False

    def close(self) -> None:
        self.sock.close()


def response_status(frames: list[Frame], sid: int) -> int | None:
    """The :status of stream ``sid``'s response in ``frames`` (decoded in order)."""
    from hpack import Decoder
    dec = Decoder()
    dec.max_header_list_size = 1 << 20
    status = None
    for f in frames:
        if isinstance(f, HeadersFrame):
            block = dict(dec.decode(f.data, raw=True))
            if f.stream_id == sid and b":status" in block:
                status = int(block[b":status"])
    return status


def goaway(frames: list[Frame]) -> GoAwayFrame | None:
    return next((f for f in frames if isinstance(f, GoAwayFrame)), None)


def h2_ok(port: int) -> None:
    """A normal HTTP/2 request (h2 as the client) gets the app's answer quickly."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"app"),
                            (b":path", b"/normal")], end_stream=True)
    started = time.monotonic()
    with connect(port) as s:
        s.sendall(conn.data_to_send())
        status, body = None, b""
        while time.monotonic() - started < 5:
            data = s.recv(65536)
            assert data, "connection closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    assert (status, body) == (200, b"ok")
                    assert time.monotonic() - started < 2.0
                    return
            s.sendall(conn.data_to_send())
    raise AssertionError("no response within 5 s")


__all__ = ["ContinuationFrame", "PingFrame", "RstStreamFrame", "SettingsFrame"]
