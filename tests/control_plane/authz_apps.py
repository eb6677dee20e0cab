"""Apps for the AuthorizationPolicy mesh tests, run inside pods as a non-proxy uid.

    python authz_apps.py serve HTTP_PORT GRPC_PORT TCP_PORT...
        HTTP/1.1 on HTTP_PORT: any method and path → 200 "ok <METHOD> <path> xfcc=<XFCC or ->\n";
        gRPC on GRPC_PORT: /authz.Echo/Unary echoes; TCP_PORTs: "hello " + each line (tcp-echo)
    python authz_apps.py grpc TARGET      one unary call; prints the status code name
    python authz_apps.py tcp HOST PORT    sends "world\n"; prints the reply or "rejected"
    python authz_apps.py tls HOST PORT SNI  sends a TLS ClientHello naming SNI, then a newline;
                                            prints "relayed" (the echo answered) or "rejected"
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import sys
import threading
from concurrent import futures


def _http(port: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            xfcc = self.headers.get("x-forwarded-client-cert", "-")
            body = f"ok {self.command} {self.path} xfcc={xfcc}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PROPFIND = _any  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True

        def server_bind(self) -> None:
            socketserver.TCPServer.server_bind(self)  # no DNS lookup of our own name
            self.server_name, self.server_port = "app", port

    Server(("::", port), Handler).serve_forever()


def _tcp(port: int) -> None:
    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(b"hello " + line)

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        allow_reuse_address = True

    Server(("::", port), Echo).serve_forever()


def _grpc(port: int) -> None:
    import grpc

    handler = grpc.method_handlers_generic_handler("authz.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    server.wait_for_termination()


def serve(http_port: int, grpc_port: int, tcp_ports: list[int]) -> None:
    threads = [threading.Thread(target=_tcp, args=(p,), daemon=True) for p in tcp_ports]
    threads.append(threading.Thread(target=_grpc, args=(grpc_port,), daemon=True))
    for t in threads:
        t.start()
    _http(http_port)


def grpc_call(target: str) -> None:
    import grpc

    with grpc.insecure_channel(target) as ch:
        try:
            ch.unary_unary("/authz.Echo/Unary")(b"ping", timeout=5)
            print("OK")
        except grpc.RpcError as e:
            print(e.code().name, e.details())


def tcp_call(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"world\n")
            data = s.recv(100)
    except OSError:
        data = b""
    print(data.decode().strip() or "rejected")


def tls_probe(host: str, port: int, sni: str) -> None:
    import ssl

    out = ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(out.read() + b"\n")
            data = s.recv(100)
    except OSError:
        data = b""
    print("relayed" if data.startswith(b"hello") else "rejected")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(int(args[0]), int(args[1]), [int(a) for a in args[2:]])
    elif mode == "grpc":
        grpc_call(args[0])
    elif mode == "tcp":
        tcp_call(args[0], int(args[1]))
    elif mode == "tls":
        tls_probe(args[0], int(args[1]), args[2])
