"""Cost of the HTTP/2 request-headers timeout's frame scan (sidecar/http/limits.py
``HeaderBlockWatch.feed``), which the HTTP/2 relay runs on every downstream read.

Run from the repo root: `.venv/bin/python perf/header_watch_micro.py`. No sockets. Compare
with `perf/h2_codec_micro.py` (the codec's own cost per exchange, both ends).
"""

from __future__ import annotations

import timeit

from sidecar.http import limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, payload: bytes, sid: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def main(n: int = 200_000) -> None:
    watch = limits.HeaderBlockWatch(limits.Limits(), lambda: None)
    watch.feed(PREFACE)
    reads = {
        "10 GET requests in one read": b"".join(frame(1, 5, b"x" * 20, 2 * i + 1) for i in range(10)),
        "1 GET request": frame(1, 5, b"x" * 20),
        "16 KiB DATA frame": frame(0, 0, b"d" * 16384),
    }
    for name, data in reads.items():
        per_read = timeit.timeit(lambda data=data: watch.feed(data), number=n) / n
        print(f"{name}: {per_read * 1e6:.2f} us per read")


if __name__ == "__main__":
    main()
