"""Apps for the control-plane mesh tests, run inside pods as a non-proxy uid.

    python cp_apps.py serve PORT NAME            HTTP/1.1 keep-alive server answering "NAME\n"
    python cp_apps.py count URL N                N requests on one keep-alive connection;
                                                 prints {"bodies": {body: count}, "failed": k}
    python cp_apps.py load URL SECONDS OUTFILE   requests back to back (new connection after an
                                                 error) for SECONDS; writes {"ok": n, "failed": k,
                                                 "errors": [...]} to OUTFILE
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import socketserver
import sys
import time
import urllib.parse
from collections import Counter


def serve(port: int, name: str) -> None:
    body = f"{name}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body in one segment, no Nagle: else delayed ACKs add 40 ms per request.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6  # "::" takes IPv4 too (dual stack)
        daemon_threads = True

        def server_bind(self) -> None:
            # HTTPServer.server_bind resolves its own name (DNS): pods here have no resolver.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "app", port

    server = Server(("::", port), Handler)
    print("serving", flush=True)
    server.serve_forever()


def _conn(url: str) -> tuple[http.client.HTTPConnection, str]:
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5), u.path or "/"


def _get(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read().decode().strip()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {body[:80]}")
    return body


def count(url: str, n: int) -> None:
    conn, path = _conn(url)
    bodies: Counter[str] = Counter()
    failed = 0
    for _ in range(n):
        try:
            bodies[_get(conn, path)] += 1
        except (OSError, RuntimeError, http.client.HTTPException):
            failed += 1
            conn.close()
            conn, path = _conn(url)
    print(json.dumps({"bodies": bodies, "failed": failed}))


def load(url: str, seconds: float, out: str) -> None:
    conn, path = _conn(url)
    ok = failed = 0
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            _get(conn, path)
            ok += 1
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            failed += 1
            errors.append(repr(exc)[:200])
            conn.close()
            conn, path = _conn(url)
        time.sleep(0.005)
    with open(out, "w") as f:
        json.dump({"ok": ok, "failed": failed, "errors": errors[:20]}, f)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        serve(int(rest[0]), rest[1])
    elif cmd == "count":
        count(rest[0], int(rest[1]))
    elif cmd == "load":
        load(rest[0], float(rest[1]), rest[2])
    else:
        sys.exit(f"unknown command {cmd!r}")
