"""Trace context headers: W3C ``traceparent`` (``tracestate`` is forwarded untouched) and B3,
multi-header (``x-b3-*``) and single-header (``b3``). Pure functions, no OpenTelemetry import.

A proxy reads the context its client sent, makes its own span a child of it (or starts a
trace when there is none) and forwards the context with its own span as the parent, in the
formats the client used; a trace the proxy starts is forwarded as W3C and B3 multi-header,
which is what Istio's apps forward.
"""

from __future__ import annotations

import random
from collections.abc import Callable

W3C, B3_MULTI, B3_SINGLE = 1, 2, 4
TRACEPARENT, B3 = b"traceparent", b"b3"
X_B3 = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
# Headers the proxy replaces when it forwards a context (tracestate passes through).
REPLACED = frozenset((TRACEPARENT, B3, *X_B3))
_MASK64 = (1 << 64) - 1


class Incoming:
    """The context a request arrived with. ``trace_id``/``span_id`` are 0 when absent (a B3
    sampling-only header such as ``b3: 0``); ``sampled`` is None when nobody decided yet."""

    __slots__ = ("trace_id", "span_id", "sampled", "formats")

    def __init__(self, trace_id: int, span_id: int, sampled: bool | None, formats: int) -> None:
        self.trace_id, self.span_id, self.sampled, self.formats = trace_id, span_id, sampled, formats


def _hex(value: bytes, sizes: tuple[int, ...]) -> int | None:
    if len(value) not in sizes:
        return None
    try:
        n = int(value, 16)
    except ValueError:
        return None
    return n or None  # all-zero ids are invalid in both formats


def parse_traceparent(value: bytes) -> Incoming | None:
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff" or len(parts[3]) != 2:
        return None
    if parts[0] == b"00" and len(parts) != 4:
        return None
    trace_id, span_id = _hex(parts[1], (32,)), _hex(parts[2], (16,))
    try:
        flags = int(parts[3], 16)
    except ValueError:
        return None
    if trace_id is None or span_id is None:
        return None
    return Incoming(trace_id, span_id, bool(flags & 1), W3C)


def _b3_sampled(value: bytes) -> bool | None:
    v = value.strip().lower()
    if v in (b"1", b"true", b"d"):
        return True
    if v in (b"0", b"false"):
        return False
    return None


def parse_b3_single(value: bytes) -> Incoming | None:
    parts = value.strip().split(b"-")
    if len(parts) == 1:  # sampling decision only: "0", "1" or "d"
        sampled = _b3_sampled(parts[0])
        return None if sampled is None else Incoming(0, 0, sampled, B3_SINGLE)
    trace_id, span_id = _hex(parts[0], (16, 32)), _hex(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    sampled = _b3_sampled(parts[2]) if len(parts) > 2 else None
    return Incoming(trace_id, span_id, sampled, B3_SINGLE)


def parse(headers: list[tuple[bytes, bytes]]) -> Incoming | None:
    """The request's context: W3C wins over B3 single over B3 multi (as in OpenTelemetry's
    composite propagators); each format's presence is kept for forwarding."""
    w3c = single = None
    multi: dict[bytes, bytes] = {}
    for name, value in headers:
        n = name.lower()
        if n == TRACEPARENT:
            w3c = parse_traceparent(value)
        elif n == B3:
            single = parse_b3_single(value)
        elif n in X_B3:
            multi[n] = value
    formats = (W3C if w3c else 0) | (B3_SINGLE if single else 0)
    found = w3c or single
    if multi:
        trace_id = _hex(multi.get(b"x-b3-traceid", b"").strip(), (16, 32))
        span_id = _hex(multi.get(b"x-b3-spanid", b"").strip(), (16,))
        sampled = (True if multi.get(b"x-b3-flags", b"").strip() == b"1"
                   else _b3_sampled(multi.get(b"x-b3-sampled", b"")))
        if trace_id and span_id or sampled is not None:
            formats |= B3_MULTI
            if found is None:
                found = Incoming(trace_id or 0, (span_id or 0) if trace_id else 0, sampled, 0)
    if found is None:
        return None
    found.formats = formats
    return found


def new_trace_id(_bits: Callable[[int], int] = random.getrandbits) -> int:
    # Mersenne Twister, not os.urandom: no syscall per request; a trace id is not a secret.
    return _bits(128) or 1


def new_span_id(_bits: Callable[[int], int] = random.getrandbits) -> int:
    return _bits(64) or 1


def outgoing(trace_id: int, span_id: int, parent_id: int, sampled: bool,
             formats: int) -> list[tuple[bytes, bytes]]:
    """Headers that forward the context with ``span_id`` as the parent of the next hop."""
    if not formats & (B3_MULTI | B3_SINGLE):
        formats |= B3_MULTI  # a started or W3C-only trace is also forwarded as x-b3-*
    flag = b"1" if sampled else b"0"
    tid, sid = b"%032x" % trace_id, b"%016x" % span_id
    out = [(TRACEPARENT, b"00-%s-%s-%s" % (tid, sid, b"01" if sampled else b"00"))]
    if formats & B3_MULTI:
        out += [(b"x-b3-traceid", tid if trace_id > _MASK64 else b"%016x" % trace_id),
                (b"x-b3-spanid", sid), (b"x-b3-sampled", flag)]
        if parent_id:
            out.append((b"x-b3-parentspanid", b"%016x" % parent_id))
    if formats & B3_SINGLE:
        single = b"%s-%s-%s" % (tid, sid, flag)
        out.append((B3, single + (b"-%016x" % parent_id if parent_id else b"")))
    return out
