"""The benchmark's app: nginx with one worker serving a 1,024-byte body with keep-alive (HTTP/1.1
on one port, optionally the same over h2c and a large file for bulk transfers on others).

The h2c port also answers a gRPC-shaped unary call (``GRPC_PATH``): a POST with a 100-byte
gRPC-framed message gets a 100-byte gRPC-framed reply and ``grpc-status: 0`` in trailers
(nginx's static module with the POST → GET ``error_page`` trick and ``add_trailer``), so
h2load can drive a gRPC workload against an app that costs next to nothing.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

BULK_NAME = "bulk"
GRPC_PATH = "/grpc.bench.Bench/Unary"
GRPC_MESSAGE_BYTES = 100


def grpc_frame(payload_byte: bytes, size: int = GRPC_MESSAGE_BYTES) -> bytes:
    """One length-prefixed gRPC message: a protobuf string field (tag 1) filling ``size`` bytes."""
    msg = b"\x0a" + bytes([size - 2]) + payload_byte * (size - 2)
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def write_grpc_request(directory: Path) -> Path:
    """The request body h2load sends (-d) for the gRPC workload."""
    path = directory / "grpc-request.bin"
    path.write_bytes(grpc_frame(b"q"))
    path.chmod(0o644)
    return path


def write_site(directory: Path, port: int, body_bytes: int = 1024, *, h2_port: int | None = None,
               bulk_port: int | None = None, bulk_bytes: int = 1 << 29) -> Path:
    """Write nginx.conf and the document root under ``directory``; returns the config path."""
    root = directory / "www"
    root.mkdir(parents=True, exist_ok=True)
    (root / "1k").write_bytes(b"x" * body_bytes)
    grpc_dir = root / GRPC_PATH.strip("/").split("/")[0]
    grpc_dir.mkdir(exist_ok=True)
    (root / GRPC_PATH.strip("/")).write_bytes(grpc_frame(b"r"))
    if bulk_port:
        # Sparse: served from the page cache, so the disk never limits the transfer.
        subprocess.run(["truncate", "-s", str(bulk_bytes), str(root / BULK_NAME)], check=True)
    listens = f"    listen {port} reuseport;\n"
    if h2_port:
        listens += f"    listen {h2_port} http2 reuseport;\n"
    bulk = ""
    if bulk_port:  # sendfile only here: the 1 KB baseline stays as in bench-reference.md
        bulk = f"  server {{ listen {bulk_port} reuseport; sendfile on; root {root}; }}\n"
    conf = directory / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  server {{
{listens}    root {root};
    location / {{ default_type application/octet-stream; }}
    location /{GRPC_PATH.strip("/").split("/")[0]}/ {{
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      error_page 405 =200 $uri;
    }}
  }}
{bulk}}}
""")
    return conf
