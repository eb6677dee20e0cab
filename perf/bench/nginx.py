"""The benchmark's app: nginx with one worker serving a 1,024-byte body with keep-alive."""

from __future__ import annotations

from pathlib import Path


def write_site(directory: Path, port: int, body_bytes: int = 1024) -> Path:
    """Write nginx.conf and the document root under ``directory``; returns the config path."""
    root = directory / "www"
    root.mkdir(parents=True, exist_ok=True)
    (root / "1k").write_bytes(b"x" * body_bytes)
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
    listen {port} reuseport;
    root {root};
    location / {{ default_type application/octet-stream; }}
  }}
}}
""")
    return conf
