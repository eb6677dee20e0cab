"""Python calls and CPU per relayed HTTP/1.1 request in the proxy's relay (no root).

    python perf/h1_calls.py [N] [--top=K] [--no-metrics] [--nginx] [--inbound]

An outbound HTTP/1.1 relay (``sidecar.http1.H1Downstream`` with a real ``Router`` and
``Connector``) runs in this process on loopback; the app (a fixed keep-alive response) and
the client (N keep-alive GETs on one connection) run in child processes, so only the proxy's
work is counted. After a warm-up that fills the upstream pool, N requests run unprofiled
(this process's user+sys CPU, in microseconds per request) and N more under cProfile (Python
calls per request, total and in ``sidecar`` modules); one JSON line. Istio's metrics are on,
as in the proxy (``--no-metrics``: off, as this script measured before they were);
``--nginx``: the app answers with nginx's head for a 1 KiB file (8 headers), as in
``perf/run``, instead of a 2-header reply; ``--inbound``: the server side's relay (plaintext
here: the mTLS hop is not part of it); ``--top=K`` also prints (to stderr) the K
functions called most, with their calls per request.

Calls per request (2-header reply; with metrics / --no-metrics): 83 before the
traffic-management milestone (no metrics then), 94 / 87 at 636a800, 74 / 72 after the
HTTP/1.1 hot-path work; with --nginx 123 -> 74. docs/proxy.md, "HTTP/1.1 hot path cost".
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import resource
import socket
import subprocess
import sys
import textwrap

from control_plane.api.model import ProxyConfig
from sidecar.http1 import H1Context, H1Downstream, H1Pool
from sidecar.labels import Labeler
from sidecar.routing import Router
from sidecar.stats import INBOUND, OUTBOUND, Stats
from sidecar.upstream import Connector

APP = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True)
    reply = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
    if sys.argv[1:] == ["nginx"]:  # nginx's head for a static 1 KiB file, as perf/run serves
        reply = (b"HTTP/1.1 200 OK\\r\\nServer: nginx/1.22.1\\r\\nDate: Wed, 02 Dec 2026 00:00:00 GMT"
                 b"\\r\\nContent-Type: application/octet-stream\\r\\nContent-Length: 1024\\r\\n"
                 b"Last-Modified: Tue, 01 Dec 2026 00:00:00 GMT\\r\\nConnection: keep-alive\\r\\n"
                 b'ETag: "6570a000-400"\\r\\nAccept-Ranges: bytes\\r\\n\\r\\n' + b"x" * 1022 + b"ok")
    while True:
        c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            d = c.recv(65536)
            if not d: break
            buf += d
            while b"\\r\\n\\r\\n" in buf:
                _, buf = buf.split(b"\\r\\n\\r\\n", 1); c.sendall(reply)
""")
CLIENT = textwrap.dedent("""
    import socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (b"GET /x HTTP/1.1\\r\\nHost: web\\r\\nUser-Agent: calls\\r\\nAccept: */*\\r\\n\\r\\n")
    for _ in range(n):
        c.sendall(req)
        got = b""
        while not got.endswith(b"ok"):
            got += c.recv(65536)
""")


async def main(n: int, top: int = 0, metrics: bool = True, nginx: bool = False,
               inbound: bool = False) -> dict[str, float]:
    app = subprocess.Popen([sys.executable, "-c", APP, *(["nginx"] if nginx else [])],
                           stdout=subprocess.PIPE)
    try:
        assert app.stdout is not None
        app_port = int(app.stdout.readline())
        cfg = ProxyConfig.from_dict({
            "clusters": [{"name": "web|80", "service": "web", "port": 80, "protocol": "http",
                          "endpoints": [{"address": "127.0.0.1", "port": app_port}]}],
            "outbound": [{"service": "web", "addresses": ["198.18.0.1"], "port": 80,
                          "protocol": "http", "default_cluster": "web|80"}]})
        router = Router(cfg)
        labels = Labeler()  # Istio's metrics are always on in the proxy
        labels.update(cfg)
        stats = Stats()
        pool = H1Pool(stats)
        connector = Connector(lambda: None, stats)
        if inbound:  # the server side's relay: to the app in its pod, the peer verified
            ctx = H1Context(INBOUND, connector, pool, stats, lambda: False,
                            inbound_target=("127.0.0.1", app_port), service=f"inbound|{app_port}",
                            peer_identity="spiffe://cluster.local/ns/default/sa/client",
                            local_identity="spiffe://cluster.local/ns/default/sa/web",
                            labels=labels if metrics else None)
        else:
            ctx = H1Context(OUTBOUND, connector, pool, stats, lambda: False, router=router,
                            outbound_port=router.lookup("198.18.0.1", 80), service="web",
                            current_router=lambda: router, original_dst=("198.18.0.1", 80),
                            labels=labels if metrics else None)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: H1Downstream(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def run(count: int) -> None:
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CLIENT, str(port),
                                                     str(count)], check=True)
        await run(50)  # warm: the pool holds a connection, caches are filled
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        await run(n)  # unprofiled: this process's CPU (user+sys) is the relay's
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_us = (t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime) / n * 1e6
        prof = cProfile.Profile()
        prof.enable()
        await run(n)
        prof.disable()
        server.close()
        st = pstats.Stats(prof)
        total = sidecar = 0
        for (filename, _, _), (_, ncalls, *_rest) in st.stats.items():  # type: ignore[attr-defined]
            total += ncalls
            if "/sidecar/" in filename:
                sidecar += ncalls
        if top:  # where the calls go: per-function calls per request, most first
            rows = sorted(st.stats.items(), key=lambda kv: -kv[1][1])[:top]  # type: ignore[attr-defined]
            for (filename, line, name), (_, ncalls, *_rest) in rows:
                print(f"{ncalls / n:6.2f}  {name}  {filename.rsplit('/', 2)[-1]}:{line}",
                      file=sys.stderr)
        return {"requests": n, "calls_per_request": round(total / n, 1),
                "sidecar_calls_per_request": round(sidecar / n, 1),
                "relay_cpu_us_per_request": round(cpu_us, 1)}
    finally:
        app.kill()


if __name__ == "__main__":
    import uvloop  # the proxy's event loop

    socket.setdefaulttimeout(10)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top = next((int(a[6:]) for a in sys.argv[1:] if a.startswith("--top=")), 0)
    metrics = "--no-metrics" not in sys.argv
    nginx, inbound = "--nginx" in sys.argv, "--inbound" in sys.argv
    print(json.dumps(uvloop.run(main(int(args[0]) if args else 2000, top, metrics, nginx, inbound))))
