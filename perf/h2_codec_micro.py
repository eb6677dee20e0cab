"""Per-exchange cost of each HTTP/2 codec at the events interface (both ends, GET 1 KB).

Run from the repo root: `.venv/bin/python perf/h2_codec_micro.py`. No sockets: the codec
alone, the floor under what the relay can reach.
"""

from __future__ import annotations

import time

from sidecar.http.events import Data, RequestHead
from sidecar.http.h2codec import H2Codec
from sidecar.http.ngcodec import NgH2Codec, available


def per_exchange_us(cls, n: int) -> float:
    c, s = cls(True), cls(False)
    for _ in range(2):  # prefaces and SETTINGS acks
        s.feed(c.data_to_send())
        c.feed(s.data_to_send())
    head = RequestHead(0, b"GET", b"http", b"svc:80", b"/x",
                       [(b"user-agent", b"h2load"), (b"accept", b"*/*")], True)
    body = b"x" * 1024
    t = time.perf_counter()
    for _ in range(n):
        sid = c.send_request_head(head)
        s.feed(c.data_to_send())
        s.send_response_head(sid, 200, [(b"content-length", b"1024")])
        s.send_data(sid, body, end_stream=True)
        for e in c.feed(s.data_to_send()):
            if type(e) is Data:
                c.ack(e.stream_id, e.flow)
        d = c.data_to_send()
        if d:
            s.feed(d)
    return (time.perf_counter() - t) / n * 1e6


if __name__ == "__main__":
    codecs = [(H2Codec, 3_000)] + ([(NgH2Codec, 30_000)] if available() else [])
    for cls, n in codecs:
        best = min(per_exchange_us(cls, n) for _ in range(3))
        print(f"{cls.__name__}: {best:.1f} us per exchange, both ends")
