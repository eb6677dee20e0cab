"""Requests on one keep-alive connection, for the tracing tests (run inside a pod).

    python trace_client.py URL N [NAME:VALUE ...]

Prints a JSON list: each response's status and body (parsed as JSON when it is JSON).
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.parse


def main() -> None:
    url, n = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2])
    headers = dict(h.split(":", 1) for h in sys.argv[3:])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    out = []
    for _ in range(n):
        conn.request("GET", url.path or "/", headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body
        out.append({"status": resp.status, "body": parsed})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
