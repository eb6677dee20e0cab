"""Opaque TCP: one large transfer (curl downloading a file to /dev/null), in MB/s."""

from __future__ import annotations


def curl_argv(url: str, core: int | None) -> list[str]:
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
            "-w", "%{size_download} %{time_total}", url]
    return (["taskset", "-c", str(core)] if core is not None else []) + argv


def parse_curl(output: str) -> dict:
    try:
        size, seconds = output.split()
        nbytes, secs = int(size), float(seconds)
    except ValueError:
        raise RuntimeError(f"curl printed no size and time: {output!r}") from None
    return {"bytes": nbytes, "seconds": secs, "mb_per_s": nbytes / secs / 1e6}
