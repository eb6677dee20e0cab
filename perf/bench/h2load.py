"""HTTP/2 throughput with h2load: fixed clients and streams per client, pinned to a core."""

from __future__ import annotations

import re

_RPS = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_REQ = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored")


def h2load_argv(url: str, duration: float, clients: int, streams: int, core: int | None,
                warmup: float = 1.0, grpc_body: str | None = None) -> list[str]:
    """``grpc_body``: a file with one gRPC-framed message, POSTed as a unary gRPC call."""
    grpc = ["-d", grpc_body, "-H", "content-type: application/grpc", "-H", "te: trailers"] \
        if grpc_body else []
    argv = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{int(duration * 1000)}ms",
            f"--warm-up-time={int(warmup * 1000)}ms", *grpc, url]
    return (["taskset", "-c", str(core)] if core is not None else []) + argv


def parse_h2load(output: str) -> dict:
    m, r = _RPS.search(output), _REQ.search(output)
    if not m or not r:
        raise RuntimeError(f"h2load printed no result:\n{output}")
    return {"rps": float(m.group(1)), "requests": int(r.group(3)),
            "errors": int(r.group(4)) + int(r.group(5))}
