"""The reference: two HAProxy 2.6 instances doing the sidecars' job (mTLS between them, L7)."""

from __future__ import annotations

from pathlib import Path

_COMMON = """global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
"""


def client_side_config(server_ip: str, pems: dict[str, Path]) -> str:
    """In the client pod: plaintext in on 127.0.0.1:15001, mutual TLS out, connections reused."""
    return _COMMON + f"""frontend out_listener
  bind 127.0.0.1:15001
  default_backend to_server_sidecar
backend to_server_sidecar
  http-reuse always
  server s1 {server_ip}:15006 ssl crt {pems['client']} ca-file {pems['ca']} verify required verifyhost server.bench sni str(server.bench) alpn http/1.1
"""


def server_side_config(server_ip: str, app_port: int, pems: dict[str, Path]) -> str:
    """In the server pod: mutual TLS in on :15006, plaintext to the app on localhost."""
    return _COMMON + f"""frontend in_listener
  bind {server_ip}:15006 ssl crt {pems['server']} ca-file {pems['ca']} verify required alpn http/1.1
  default_backend to_app
backend to_app
  http-reuse always
  server app 127.0.0.1:{app_port}
"""
