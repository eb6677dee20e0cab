"""Open-loop HTTP/1.1 load at a fixed request rate, timing every request itself.

Run inside the client pod: ``python -m perf.bench.fixed_rate URL --rate 1000 --duration 10``.
Prints one JSON object: per-request latency percentiles measured two ways:

- ``service``: from the moment the request was written to the moment its response ended;
- ``corrected``: from the moment the request was *scheduled* (open-loop), so a stall that
  delays later requests is charged to them too (no coordinated omission).

wrk's own percentiles at low concurrency add synthetic samples (see bench-reference.md); this
client records only real requests. Keep-alive connections are spread round-robin; a request
whose connection is still busy goes to the next idle one (or waits, which ``corrected`` shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import httptools
import uvloop


class _Conn(asyncio.Protocol):
    def __init__(self, on_done) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.sent_ns = 0
        self.sched_ns = 0
        self.status = 0
        self.lost: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        now = time.perf_counter_ns()
        self.busy = False
        self.on_done(self, now - self.sent_ns, now - self.sched_ns, self.parser.get_status_code())

    def connection_lost(self, exc) -> None:
        if self.busy:
            self.busy = False
            self.on_done(self, -1, -1, 0)
        self.transport = None


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {}
    s = sorted(samples_ns)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1e6

    return {"p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
            "max_ms": s[-1] / 1e6, "mean_ms": sum(s) / len(s) / 1e6}


async def run(url: str, rate: float, duration: float, connections: int, warmup: float) -> dict:
    u = urlsplit(url)
    if not u.hostname:
        raise SystemExit(f"fixed_rate: no host in {url!r}")
    host, port = u.hostname, u.port or 80
    request = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUser-Agent: remora-bench\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    service: list[int] = []
    corrected: list[int] = []
    errors = 0
    codes: dict[int, int] = {}
    measuring = False
    idle: list[_Conn] = []
    waiters: asyncio.Queue[int] = asyncio.Queue()

    def on_done(conn: _Conn, svc: int, corr: int, status: int) -> None:
        nonlocal errors
        if measuring:
            if svc < 0:
                errors += 1
            else:
                service.append(svc)
                corrected.append(corr)
                codes[status] = codes.get(status, 0) + 1
        if conn.transport is not None:
            if not waiters.empty():
                send(conn, waiters.get_nowait())
            else:
                idle.append(conn)

    def send(conn: _Conn, sched_ns: int) -> None:
        assert conn.transport is not None  # only connected connections are idle
        conn.busy = True
        conn.sched_ns = sched_ns
        conn.sent_ns = time.perf_counter_ns()
        conn.transport.write(request)

    conns = []
    for _ in range(connections):
        _, c = await loop.create_connection(lambda: _Conn(on_done), host, port)
        conns.append(c)
        idle.append(c)

    interval_ns = int(1e9 / rate)
    start = time.perf_counter_ns()
    total = int((warmup + duration) * rate)
    warm_n = int(warmup * rate)
    for i in range(total):
        if i == warm_n:
            measuring = True
        sched = start + i * interval_ns
        delay = (sched - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            send(idle.pop(), sched)
        else:
            waiters.put_nowait(sched)
    # Let the last responses arrive.
    deadline = time.monotonic() + 5
    while any(c.busy for c in conns) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for c in conns:
        if c.transport:
            c.transport.close()
    return {
        "rate": rate, "duration_s": duration, "connections": connections,
        "requests": len(service), "errors": errors, "status_codes": codes,
        "service": percentiles(service), "corrected": percentiles(corrected),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--connections", type=int, default=4)
    a = ap.parse_args(argv)
    uvloop.install()
    result = asyncio.run(run(a.url, a.rate, a.duration, a.connections, a.warmup))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
