"""A tiny TCP peer run inside test pods.

``serve PORT TAG [4]``: dual-stack listener (IPv4 only with ``4``); prints ``ready`` once listening, then answers every
connection with ``TAG HOST PORT`` where HOST:PORT is the original destination that
sidecar.original_dst reads (``- -`` when the connection was not redirected).

``ask HOST PORT [SOURCE]``: connects (from SOURCE when given), prints the answer. Retries while
the connection is refused, for a few seconds, so a server that is still starting is fine.
"""

from __future__ import annotations

import socket
import sys
import time

from sidecar.original_dst import original_dst


def serve(port: int, tag: str, ipv4_only: bool) -> None:
    s = socket.socket(socket.AF_INET if ipv4_only else socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not ipv4_only:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 comes as ::ffff:a.b.c.d
    s.bind(("0.0.0.0" if ipv4_only else "::", port))
    s.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        with conn:
            try:
                host, dport = original_dst(conn)
            except OSError:
                host, dport = "-", "-"
            conn.sendall(f"{tag} {host} {dport}\n".encode())


def ask(host: str, port: int, source: str | None) -> str:
    deadline = time.monotonic() + 5
    while True:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        c = socket.socket(family, socket.SOCK_STREAM)
        c.settimeout(3)
        try:
            if source:
                c.bind((source, 0))
            c.connect((host, port))
            return c.makefile().readline().strip()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            c.close()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "serve":
        serve(int(rest[0]), rest[1], rest[2:] == ["4"])
    else:
        print(ask(rest[0], int(rest[1]), rest[2] if len(rest) > 2 else None))
