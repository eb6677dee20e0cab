"""Trace context headers (W3C and B3), parsed and forwarded; the tracer's span decisions."""

from __future__ import annotations

import pytest

from sidecar import tracecontext as tc
from sidecar.tracing import CLIENT, Tracer, h1_rewrite, h2_rewrite

T = "4bf92f3577b34da6a3ce929d0e0e4736"
S = "00f067aa0ba902b7"


def test_w3c_traceparent() -> None:
    inc = tc.parse([(b"Traceparent", f"00-{T}-{S}-01".encode())])
    assert (inc.trace_id, inc.span_id, inc.sampled, inc.formats) == (int(T, 16), int(S, 16), True, tc.W3C)
    assert tc.parse([(b"traceparent", f"00-{T}-{S}-00".encode())]).sampled is False


@pytest.mark.parametrize("value", [
    f"00-{'0' * 32}-{S}-01", f"00-{T}-{'0' * 16}-01", f"ff-{T}-{S}-01", f"00-{T[:-1]}-{S}-01",
    f"00-{T}-{S}-01-extra", f"00-{T}-{S}-zz", "garbage",
])
def test_invalid_traceparent_is_ignored(value: str) -> None:
    assert tc.parse([(b"traceparent", value.encode())]) is None


def test_b3_multi_and_single() -> None:
    multi = tc.parse([(b"X-B3-TraceId", b"463ac35c9f6413ad"), (b"X-B3-SpanId", S.encode()),
                      (b"X-B3-Sampled", b"0")])
    assert (multi.trace_id, multi.span_id, multi.sampled, multi.formats) == (
        0x463ac35c9f6413ad, int(S, 16), False, tc.B3_MULTI)
    debug = tc.parse([(b"x-b3-traceid", T.encode()), (b"x-b3-spanid", S.encode()), (b"x-b3-flags", b"1")])
    assert debug.sampled is True
    single = tc.parse([(b"b3", f"{T}-{S}-1-{S}".encode())])
    assert (single.trace_id, single.span_id, single.sampled, single.formats) == (
        int(T, 16), int(S, 16), True, tc.B3_SINGLE)
    deny = tc.parse([(b"b3", b"0")])
    assert (deny.trace_id, deny.sampled) == (0, False)


def test_w3c_wins_and_every_format_seen_is_forwarded() -> None:
    inc = tc.parse([(b"b3", f"{'1' * 32}-{'2' * 16}-0".encode()),
                    (b"traceparent", f"00-{T}-{S}-01".encode())])
    assert (inc.trace_id, inc.sampled, inc.formats) == (int(T, 16), True, tc.W3C | tc.B3_SINGLE)
    out = dict(tc.outgoing(inc.trace_id, 0xabc, inc.span_id, True, inc.formats))
    assert out[b"traceparent"] == f"00-{T}-{0xabc:016x}-01".encode()
    assert out[b"b3"] == f"{T}-{0xabc:016x}-1-{S}".encode()
    assert b"x-b3-traceid" not in out


def test_started_trace_is_forwarded_as_w3c_and_b3_multi_with_64_bit_ids_kept() -> None:
    out = dict(tc.outgoing(0x463ac35c9f6413ad, 5, 0, False, 0))
    assert out[b"traceparent"] == b"00-0000000000000000463ac35c9f6413ad-0000000000000005-00"
    assert (out[b"x-b3-traceid"], out[b"x-b3-sampled"]) == (b"463ac35c9f6413ad", b"0")
    assert b"x-b3-parentspanid" not in out


class Sink:
    def __init__(self) -> None:
        self.spans: list = []

    def submit(self, span, end_ns: int) -> None:
        self.spans.append(span)

    def set_service(self, name: str) -> None:
        pass

    def render(self) -> str:
        return ""


def test_tracer_follows_the_incoming_decision_and_samples_new_traces_at_its_rate() -> None:
    sink = Sink()
    never = Tracer(0.0, sink)
    span, fwd = never.start([(b"traceparent", f"00-{T}-{S}-01".encode())], CLIENT, "n", b"GET",
                            b"/", "HTTP/1.1")
    assert span.sampled and span.trace_id == int(T, 16) and span.parent_id == int(S, 16)
    never.end(span, 200, "-", "outbound|80||x", None, 1, 2)
    assert sink.spans == [span] and span.attributes["http.status_code"] == 200
    assert [s.sampled for s in (never.start([], CLIENT, "n", b"GET", b"/", "HTTP/1.1")[0]
                                for _ in range(200))] == [False] * 200
    half = Tracer(50.0, sink)
    n = sum(half.start([], CLIENT, "n", b"GET", b"/", "HTTP/1.1")[0].sampled for _ in range(4000))
    assert 1800 <= n <= 2200  # sd 32


def test_forwarded_heads_replace_only_the_trace_headers() -> None:
    fwd = [(b"traceparent", b"00-x"), (b"x-b3-traceid", b"y")]
    lines = [b"GET / HTTP/1.1\r\n", b"Traceparent: old\r\n", b"tracestate: keep\r\n",
             b"X-B3-Sampled: 1\r\n", b"host: a\r\n"]
    assert h1_rewrite(lines, fwd) == [b"GET / HTTP/1.1\r\n", b"tracestate: keep\r\n", b"host: a\r\n",
                                      b"traceparent: 00-x\r\n", b"x-b3-traceid: y\r\n"]
    assert h2_rewrite([(b":path", b"/"), (b"b3", b"0"), (b"tracestate", b"k")], fwd) == [
        (b":path", b"/"), (b"tracestate", b"k"), *fwd]


def test_tracing_off_never_imports_the_sdk_and_on_does() -> None:
    import subprocess
    import sys

    code = ("import sys; from sidecar.runtime import ProxyRuntime; from sidecar.settings import Settings;"
            "rt = ProxyRuntime(Settings(trace_endpoint=sys.argv[1]));"
            "print(rt.tracer is not None, any(m.startswith('opentelemetry') for m in sys.modules))")
    off = subprocess.run([sys.executable, "-c", code, ""], capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["False", "False"]
    on = subprocess.run([sys.executable, "-c", code, "http://127.0.0.1:4318/v1/traces"],
                        capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "True"]
