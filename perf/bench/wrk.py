"""Maximum throughput with wrk: fixed connections, one thread, pinned to a core."""

from __future__ import annotations

import re

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_ERR = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_argv(url: str, duration: float, connections: int, core: int | None) -> list[str]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url]
    return (["taskset", "-c", str(core)] if core is not None else []) + argv


def parse_wrk(output: str) -> dict:
    m = _RPS.search(output)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    errors = sum(int(g) for e in _ERR.finditer(output) for g in e.groups() if g)
    return {"rps": float(m.group(1)), "errors": errors}
