"""Maximum throughput with wrk: fixed connections, one thread, pinned to a core."""

from __future__ import annotations

import re

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in ")
_ERR = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_argv(url: str, duration: float, connections: int, core: int | None) -> list[str]:
    # wrk takes whole seconds only ("5.0s" is an error).
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", url]
    return (["taskset", "-c", str(core)] if core is not None else []) + argv


def parse_wrk(output: str) -> dict:
    m, total = _RPS.search(output), _TOTAL.search(output)
    if not m or not total:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    errors = sum(int(g) for e in _ERR.finditer(output) for g in e.groups() if g)
    return {"rps": float(m.group(1)), "requests": int(total.group(1)), "errors": errors}
