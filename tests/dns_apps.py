"""Name-resolution clients and a gRPC server for the DNS tests, run as processes in test pods.

``grpc-serve PORT``: a gRPC health server (SERVING); prints ``ready``.
``grpc-check HOST:PORT``: a health check through grpcio's own resolver (c-ares, which reads
resolv.conf and never the hosts file); prints the status, exit 0 when SERVING.
``getaddrinfo NAME``: Python's socket.getaddrinfo (the C library: hosts file, then DNS); prints
the addresses, one per line.
"""

from __future__ import annotations

import os
import socket
import sys
from concurrent import futures

os.environ.setdefault("GRPC_DNS_RESOLVER", "ares")  # the default; said so that it stays so

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402


def grpc_serve(port: str) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


def grpc_check(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if status == "SERVING" else 1


def getaddrinfo(name: str) -> int:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        print(f"gaierror: {e}")
        return 1
    print("\n".join(sorted({str(i[4][0]) for i in infos})))
    return 0


COMMANDS = {"grpc-serve": grpc_serve, "grpc-check": grpc_check, "getaddrinfo": getaddrinfo}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2]))
