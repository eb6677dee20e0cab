"""A real OTLP/HTTP traces receiver (tests and the mesh-telemetry benchmark): stores each
POSTed protobuf body as a file in DIR.

    python otlp_receiver.py HOST PORT DIR

Answers 200 with an empty ExportTraceServiceResponse body; the tests decode the files with
opentelemetry-proto.
"""

from __future__ import annotations

import http.server
import itertools
import sys
from pathlib import Path

counter = itertools.count()


def main() -> None:
    host, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
            if ok:
                n = next(counter)
                tmp = out / f".{n}.tmp"
                tmp.write_bytes(body)
                tmp.rename(out / f"{n}.pb")
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
