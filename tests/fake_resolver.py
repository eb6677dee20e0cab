"""A tiny DNS server for tests, run as a process inside a test pod.

``python fake_resolver.py PORT ADDRESS [BIND]``: answers every A query (UDP and TCP) with
ADDRESS, and every other query with an empty answer; prints ``ready`` once listening. Where a
query went tells a test who answered it (the proxy, or the pod's original resolver). Names
under cluster.local are NXDOMAIN, as a cluster's DNS says of services it does not have (a stub
resolver tries the search domains in turn until one answers).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

from sidecar import dnswire


def reply(data: bytes, address: str) -> bytes | None:
    try:
        q = dnswire.parse_query(data)
    except dnswire.FormatError:
        return dnswire.error_for(data)
    if q.question.name.endswith(".cluster.local"):
        return dnswire.response(q, data, dnswire.NXDOMAIN, (), authoritative=False)
    records = (dnswire.a_record(address, 5),) if q.question.qtype == dnswire.A else ()
    return dnswire.response(q, data, dnswire.NOERROR, records, authoritative=False)


def serve_udp(sock: socket.socket, address: str) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        out = reply(data, address)
        if out:
            sock.sendto(out, peer)


def serve_tcp(sock: socket.socket, address: str) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            f = conn.makefile("rb")
            head = f.read(2)
            if len(head) == 2:
                out = reply(f.read(struct.unpack("!H", head)[0]), address)
                if out:
                    conn.sendall(struct.pack("!H", len(out)) + out)


def main(port: int, address: str, bind: str = "0.0.0.0") -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((bind, port))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp, address), daemon=True).start()
    print("ready", flush=True)
    serve_udp(udp, address)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *sys.argv[3:4])
