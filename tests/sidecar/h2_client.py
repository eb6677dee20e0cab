"""``python h2_client.py [curl options] URL...``: many h2c (prior knowledge) requests in order on
one connection, printing what curl prints for the options the traffic table uses (``-s``,
``-i``, ``-H``, ``-X``, ``--data-binary``, ``--max-time``, ``--resolve``, ``-w`` with
``%{http_code}``). curl 7.88 fails the second request on an h2c connection, and a process per
request costs the pod suite more than the requests; this client runs in the client pod as the
app would. A request that fails (reset, timeout) prints status 000 and the next one reconnects.
"""

from __future__ import annotations

import socket
import sys
import time
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    opts: dict = {"headers": [], "include": False, "method": None, "data": None, "max_time": 20.0,
                  "write_out": "", "resolve": {}}
    urls = []
    it = iter(argv)
    for a in it:
        if a == "-H":
            name, _, value = next(it).partition(":")
            opts["headers"].append((name.strip().lower(), value.strip()))
        elif a == "-i":
            opts["include"] = True
        elif a == "-X":
            opts["method"] = next(it)
        elif a == "--data-binary":
            opts["data"] = next(it).encode()
        elif a == "--max-time":
            opts["max_time"] = float(next(it))
        elif a == "-w":
            opts["write_out"] = next(it)
        elif a == "--resolve":
            host, port, addr = next(it).split(":")
            opts["resolve"][(host, int(port))] = addr
        elif a in ("-s", "--http2-prior-knowledge"):
            pass
        elif a.startswith("-"):
            raise SystemExit(f"h2_client: unsupported option {a}")
        else:
            urls.append(a)
    return opts, urls


class Conn:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())

    def request(self, headers: list[tuple[str, str]], body: bytes | None, deadline: float) -> tuple[int, list, bytes]:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        status, out_h, out = 0, [], b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for ev in self.h2.receive_data(data):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == b":status":
                            status = int(v)
                        else:
                            out_h.append((k.decode(), v.decode()))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out += ev.data
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.sock.sendall(self.h2.data_to_send())
                    return status, out_h, out
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise ConnectionError("reset")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise ConnectionError("goaway")
            self.sock.sendall(self.h2.data_to_send())


def main(argv: list[str]) -> None:
    opts, urls = parse(argv)
    conn: Conn | None = None
    for url in urls:
        u = urlsplit(url)
        port = u.port or 80
        addr = opts["resolve"].get((u.hostname, port), u.hostname)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        given = dict(opts["headers"])
        authority = given.pop("host", f"{u.hostname}:{port}")
        method = opts["method"] or ("POST" if opts["data"] is not None else "GET")
        headers = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path),
                   ("user-agent", "h2_client"), *given.items()]
        deadline = time.monotonic() + opts["max_time"]
        try:
            if conn is None:
                conn = Conn(addr, port, opts["max_time"])
            status, out_h, body = conn.request(headers, opts["data"], deadline)
        except (OSError, ConnectionError, TimeoutError, h2.exceptions.ProtocolError):
            conn, status, out_h, body = None, 0, [], b""
        out = b""
        if opts["include"] and status:
            out = (f"HTTP/2 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_h) + "\r\n").encode()
        sys.stdout.buffer.write(out + body + opts["write_out"].replace("%{http_code}", f"{status:03d}").encode())
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
