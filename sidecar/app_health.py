"""App-health probes run by the proxy for the kubelet (``:15020/app-health/<container>/<kind>``).

The injector rewrote the app's HTTP/TCP/gRPC probes to the proxy, because under STRICT mTLS
the kubelet's plaintext probes would be refused. It passed the originals in
``REMORA_APP_PROBES``: ``{"/app-health/app/readyz": {"httpGet": {...}, "timeoutSeconds": 1}}``.
Here each original is run against the app, like the kubelet would:

- httpGet: HTTP/1.1 GET, success for 200-399, ``httpHeaders`` honoured, HTTPS unverified;
- tcpSocket: the connection opens;
- grpc: ``grpc.health.v1.Health/Check`` over HTTP/2 (h2, no grpcio), SERVING is success.

Pure asyncio and h2 only: the proxy must stay small in memory (no aiohttp here).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
from collections.abc import Mapping
from typing import Any

import h2.config
import h2.connection
import h2.events

ENV = "REMORA_APP_PROBES"
DEFAULT_HOST = "127.0.0.1"
USER_AGENT = "kube-probe/remora"
OK, FAILED, UNKNOWN = 200, 503, 404
_GRPC_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

Probes = Mapping[str, Mapping[str, Any]]
_cached: dict[str, Any] | None = None


def parse_probes(text: str | None) -> dict[str, dict[str, Any]]:
    """Parse and check ``REMORA_APP_PROBES``; raises ValueError saying what is wrong."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV}: not JSON ({e}); expected an object of probe path -> probe") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ENV}: expected a JSON object of probe path -> probe")
    for path, probe in data.items():
        kinds = [k for k in ("httpGet", "tcpSocket", "grpc") if isinstance(probe, dict) and k in probe]
        if not path.startswith("/app-health/") or len(kinds) != 1:
            raise ValueError(
                f"{ENV}: entry {path!r} needs a /app-health/ path and exactly one of "
                "httpGet, tcpSocket or grpc")
        if not isinstance(probe[kinds[0]].get("port"), int):
            raise ValueError(f"{ENV}: entry {path!r} needs a numeric port")
    return data


def _env_probes() -> dict[str, Any]:
    global _cached
    if _cached is None:
        _cached = parse_probes(os.environ.get(ENV))
    return _cached


async def run_probe(path: str, probes: Probes | None = None) -> tuple[int, str]:
    """The status the agent answers for ``path`` (200 ok, 503 failed, 404 unknown) and why."""
    table = _env_probes() if probes is None else probes
    probe = table.get(path)
    if probe is None:
        return UNKNOWN, f"no app probe at {path}"
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            ok, why = await asyncio.wait_for(_http(probe["httpGet"]), timeout)
        elif "tcpSocket" in probe:
            ok, why = await asyncio.wait_for(_tcp(probe["tcpSocket"]), timeout)
        else:
            ok, why = await asyncio.wait_for(_grpc(probe["grpc"]), timeout)
    except TimeoutError:
        return FAILED, f"probe timed out after {timeout:g}s"
    except (OSError, ValueError, EOFError) as e:
        return FAILED, f"probe failed: {e.__class__.__name__}: {e}"
    return (OK if ok else FAILED), why


def _target(spec: Mapping[str, Any]) -> tuple[str, int]:
    return spec.get("host") or DEFAULT_HOST, int(spec["port"])


async def _http(spec: Mapping[str, Any]) -> tuple[bool, str]:
    host, port = _target(spec)
    secure = str(spec.get("scheme", "HTTP")).upper() == "HTTPS"
    context = None
    if secure:  # like the kubelet: TLS without verifying the app's certificate
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
        for h in spec.get("httpHeaders") or []:
            headers = {k: v for k, v in headers.items() if k.lower() != h["name"].lower()}
            headers[h["name"]] = h["value"]
        headers["Connection"] = "close"
        path = spec.get("path") or "/"
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((head + "\r\n").encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:60]!r}")
        status = int(parts[1])
        return 200 <= status < 400, f"HTTP GET {path} on port {port}: status {status}"
    finally:
        writer.close()


async def _tcp(spec: Mapping[str, Any]) -> tuple[bool, str]:
    host, port = _target(spec)
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    return True, f"TCP connect to port {port}: ok"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _health_status(message: bytes) -> int:
    """Field 1 (status enum) of grpc.health.v1.HealthCheckResponse; absent means UNKNOWN (0)."""
    pos, status = 0, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return status


async def _grpc(spec: Mapping[str, Any]) -> tuple[bool, str]:
    host, port = _target(spec)
    service = spec.get("service") or ""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [
            (":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
            (":path", "/grpc.health.v1.Health/Check"), ("content-type", "application/grpc"),
            ("te", "trailers"), ("user-agent", USER_AGENT),
        ])
        request = (b"\x0a" + _varint(len(service.encode())) + service.encode()) if service else b""
        conn.send_data(stream, b"\x00" + struct.pack(">I", len(request)) + request, end_stream=True)
        writer.write(conn.data_to_send())
        body, fields = bytearray(), {}
        ended = False
        while not ended:
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError("connection closed before the gRPC response ended")
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update({_text(k): _text(v) for k, v in event.headers})
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            writer.write(conn.data_to_send())
        if fields.get("grpc-status", "") != "0":
            return False, f"gRPC health check on port {port}: grpc-status {fields.get('grpc-status')} " \
                f"{fields.get('grpc-message', '')}".rstrip()
        if len(body) < 5:
            raise ValueError("gRPC response has no message")
        (length,) = struct.unpack(">I", bytes(body[1:5]))
        status = _health_status(bytes(body[5:5 + length]))
        name = _GRPC_STATUS.get(status, str(status))
        return status == 1, f"gRPC health check on port {port}: {name}"
    finally:
        writer.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
