"""The reference: two HAProxy 2.6 instances doing the sidecars' job (mTLS between them).

Three shapes, as the mesh scenarios: HTTP/1.1 (L7, keep-alive, reused backend connections),
HTTP/2 (h2c from the load generator and to the app, h2 over mutual TLS between the two) and
opaque TCP (mode tcp, mutual TLS between the two).
"""

from __future__ import annotations

from pathlib import Path

_GLOBAL = """global
  nbthread 1
  maxconn 4000
"""
_COMMON = _GLOBAL + """defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
"""
_TCP = _GLOBAL + """defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
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


def _tls(pems: dict[str, Path], alpn: str) -> str:
    return (f"ssl crt {pems['client']} ca-file {pems['ca']} verify required verifyhost server.bench "
            f"sni str(server.bench) alpn {alpn}")


def h2_client_side_config(server_ip: str, pems: dict[str, Path]) -> str:
    """h2c (prior knowledge) in on 127.0.0.1:15001; h2 over mutual TLS out, multiplexed."""
    return _COMMON + f"""frontend out_listener
  bind 127.0.0.1:15001 proto h2
  default_backend to_server_sidecar
backend to_server_sidecar
  http-reuse always
  server s1 {server_ip}:15006 {_tls(pems, "h2")}
"""


def h2_server_side_config(server_ip: str, app_port: int, pems: dict[str, Path]) -> str:
    """h2 over mutual TLS in on :15006; h2c to the app."""
    return _COMMON + f"""frontend in_listener
  bind {server_ip}:15006 ssl crt {pems['server']} ca-file {pems['ca']} verify required alpn h2
  default_backend to_app
backend to_app
  http-reuse always
  server app 127.0.0.1:{app_port} proto h2
"""


def tcp_client_side_config(server_ip: str, pems: dict[str, Path]) -> str:
    """Plaintext bytes in on 127.0.0.1:15001, mutual TLS out (one connection per connection)."""
    return _TCP + f"""frontend out_listener
  bind 127.0.0.1:15001
  default_backend to_server_sidecar
backend to_server_sidecar
  server s1 {server_ip}:15006 {_tls(pems, "tcp")}
"""


def tcp_server_side_config(server_ip: str, app_port: int, pems: dict[str, Path]) -> str:
    return _TCP + f"""frontend in_listener
  bind {server_ip}:15006 ssl crt {pems['server']} ca-file {pems['ca']} verify required
  default_backend to_app
backend to_app
  server app 127.0.0.1:{app_port}
"""
