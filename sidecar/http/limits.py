"""The data plane's HTTP limits: one table of names, Envoy's defaults, environment variables
and mesh-config keys (the injector passes ``proxyLimits`` on as these variables), plus the
small accounting objects the relays share.

Envoy's defaults unless noted (docs/security.md "Limits" says why where Remora differs):
header count 100 and header bytes 60 KiB (431), request-headers timeout (Envoy: off; here
10 s, the value of Envoy's edge best practices, so slowloris connections do not pile up; on
HTTP/2 a header block that does not end in time closes the connection: ``HeaderBlockWatch``),
idle timeouts 1 h, no cap on requests per connection, premature resets (Envoy ≥ 1.27.1:
a stream reset by the client within 1 s of opening; the connection is closed once 250 were,
or once 500 streams closed, whenever half of them were), 1,000 queued control frames. The
outbound frame queue is bounded in bytes instead of frames (docs/security.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


class LimitsError(ValueError):
    """A limit's value is not accepted; the message names the variable or key."""


@dataclass(frozen=True)
class Limits:
    max_headers_count: int = 100
    max_request_headers_kb: int = 60
    request_headers_timeout: float = 10.0
    idle_timeout: float = 3600.0  # downstream connection without a request in flight
    upstream_idle_timeout: float = 3600.0  # pooled upstream connection without a request
    max_requests_per_connection: int = 0  # 0: unlimited
    max_concurrent_streams: int = 128  # HTTP/2, advertised in our SETTINGS
    premature_reset_total_stream_count: int = 500
    premature_reset_min_stream_lifetime: float = 1.0
    max_outbound_control_frames: int = 1000  # HTTP/2 PING/SETTINGS acks not yet written

    @property
    def max_head_bytes(self) -> int:
        return self.max_request_headers_kb * 1024


# field -> (mesh-config key under proxyLimits, environment variable, minimum). 0 disables the
# timeouts and the per-connection request cap.
SPEC: dict[str, tuple[str, str, float]] = {
    "max_headers_count": ("maxHeadersCount", "REMORA_MAX_HEADERS_COUNT", 1),
    "max_request_headers_kb": ("maxRequestHeadersKb", "REMORA_MAX_REQUEST_HEADERS_KB", 1),
    "request_headers_timeout": ("requestHeadersTimeout", "REMORA_REQUEST_HEADERS_TIMEOUT", 0),
    "idle_timeout": ("idleTimeout", "REMORA_IDLE_TIMEOUT", 0),
    "upstream_idle_timeout": ("upstreamIdleTimeout", "REMORA_UPSTREAM_IDLE_TIMEOUT", 0),
    "max_requests_per_connection": ("maxRequestsPerConnection",
                                    "REMORA_MAX_REQUESTS_PER_CONNECTION", 0),
    "max_concurrent_streams": ("maxConcurrentStreams", "REMORA_MAX_CONCURRENT_STREAMS", 1),
    "premature_reset_total_stream_count": ("prematureResetTotalStreamCount",
                                           "REMORA_PREMATURE_RESET_TOTAL_STREAM_COUNT", 2),
    "premature_reset_min_stream_lifetime": ("prematureResetMinStreamLifetime",
                                            "REMORA_PREMATURE_RESET_MIN_STREAM_LIFETIME", 0),
    "max_outbound_control_frames": ("maxOutboundControlFrames",
                                    "REMORA_MAX_OUTBOUND_CONTROL_FRAMES", 1),
}
MESH_KEYS = {key: name for name, (key, _, _) in SPEC.items()}
_TYPES = {f.name: f.type for f in fields(Limits)}


def _value(name: str, raw: object, where: str) -> int | float:
    minimum = SPEC[name][2]
    is_int = _TYPES[name] in (int, "int")
    try:
        if isinstance(raw, bool):
            raise ValueError
        v: int | float = int(str(raw)) if is_int else float(str(raw))
    except ValueError:
        v = -1.0
    if v < minimum or v != v or v == float("inf"):
        raise LimitsError(_value_error(name, raw, where))
    return v


def _value_error(name: str, raw: object, where: str) -> str:
    kind = "an integer" if _TYPES[name] in (int, "int") else "a number of seconds"
    return f"{where}: invalid value {raw!r}; accepted: {kind} >= {SPEC[name][2]:g}"


def from_env(env: Mapping[str, str] | None = None) -> Limits:
    """The limits the injector set (``REMORA_*``), Envoy's defaults for the rest."""
    env = os.environ if env is None else env
    values = {name: _value(name, env[var], var)
              for name, (_, var, _) in SPEC.items() if env.get(var, "") != ""}
    return replace(Limits(), **values)


def from_mesh(data: object) -> tuple[tuple[str, int | float], ...]:
    """Validate mesh config ``proxyLimits``: (field, value) pairs, only the keys given."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise LimitsError("mesh config proxyLimits: accepted: a mapping of limits")
    unknown = sorted(set(data) - set(MESH_KEYS))
    if unknown:
        raise LimitsError(f"mesh config proxyLimits: unknown key(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(MESH_KEYS)}")
    return tuple((MESH_KEYS[k], _mesh_value(MESH_KEYS[k], v, f"mesh config proxyLimits.{k}"))
                 for k, v in sorted(data.items()))


def _mesh_value(name: str, raw: object, where: str) -> int | float:
    """A mesh-config value is a YAML number (as the chart's schema says), not text: an
    integral float (100.0) is an integer; anything else goes through ``_value``'s error."""
    if isinstance(raw, float) and raw.is_integer() and _TYPES[name] in (int, "int"):
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):  # "100" is text in YAML
        raise LimitsError(_value_error(name, raw, where))
    return _value(name, raw, where)


def values_schema() -> dict[str, Any]:
    """The chart's ``mesh.proxyLimits`` JSON schema: each key with its type, minimum and
    default, from SPEC and ``Limits`` (injector/valueschema.py puts it in values.schema.json)."""
    defaults = Limits()
    props: dict[str, Any] = {}
    for name, (key, var, minimum) in SPEC.items():
        is_int = _TYPES[name] in (int, "int")
        props[key] = {"type": "integer" if is_int else "number", "minimum": minimum,
                      "default": getattr(defaults, name),
                      "description": f"{'' if is_int else 'seconds; '}proxy variable {var}"}
    return {"type": ["object", "null"], "additionalProperties": False, "properties": props}


def env_for(pairs: tuple[tuple[str, int | float], ...]) -> dict[str, str]:
    """The proxy's environment for validated mesh-config limits."""
    # repr keeps every digit of a float (":g" rounded 1000.375 to 1000.38).
    return {SPEC[name][1]: repr(value) if isinstance(value, float) else str(value)
            for name, value in pairs}


_current: Limits | None = None


def current() -> Limits:
    """This process's limits (read from the environment once)."""
    global _current
    if _current is None:
        _current = from_env()
    return _current


def configure(limits: Limits | None) -> None:
    """Set this process's limits (tests, or a start-up check); None: read the environment."""
    global _current
    _current = limits


def head_overflow(count: int, size: int, limits: Limits) -> str | None:
    """Why a request head is over the header limits (431), or None."""
    if count > limits.max_headers_count:
        return f"request has more than {limits.max_headers_count} headers"
    if size > limits.max_head_bytes:
        return f"request head larger than {limits.max_request_headers_kb} KiB"
    return None


def h2_request_refusal(head: Any, limits: Limits) -> tuple[int, str] | None:
    """(status, message) Envoy answers an HTTP/2 request head with itself, or None: 431 over
    the header limits, 403 for CONNECT (not supported), 400 without :authority or host."""
    size = len(head.method) + len(head.scheme) + len(head.authority) + len(head.path)
    has_host = bool(head.authority)
    for name, value in head.headers:
        size += len(name) + len(value)
        if name == b"host":
            has_host = True
    why = head_overflow(len(head.headers), size, limits)
    if why is not None:
        return 431, why
    if head.method == b"CONNECT":
        return 403, "CONNECT is not supported"
    if not has_host:
        return 400, "missing :authority and host"
    return None


class ResetBudget:
    """Envoy's premature-reset check for one HTTP/2 connection: a stream the client resets
    within ``premature_reset_min_stream_lifetime`` of opening is premature; the connection
    must close once half of ``premature_reset_total_stream_count`` streams were (a burst
    before that many closed), and after that once half of all closed streams were."""

    __slots__ = ("limits", "opened", "closed", "premature")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.opened: dict[int, float] = {}
        self.closed = 0
        self.premature = 0

    def open(self, stream_id: int) -> None:
        self.opened[stream_id] = time.monotonic()

    def close(self, stream_id: int, reset_by_peer: bool) -> bool:
        """Count a stream's end; True when the connection must be closed."""
        started = self.opened.pop(stream_id, None)
        if started is None:
            return False
        self.closed += 1
        lim = self.limits
        if reset_by_peer and time.monotonic() - started < lim.premature_reset_min_stream_lifetime:
            self.premature += 1
        total = lim.premature_reset_total_stream_count
        if self.closed < total:  # early on: a burst of half the count
            return self.premature * 2 >= total
        return self.premature * 2 >= self.closed


class ControlFrameBudget:
    """Control frames (PING, SETTINGS) received whose acks are not written yet: above
    ``max_outbound_control_frames`` the peer is flooding (Envoy's outbound control-frame
    limit; nghttp2's max_outbound_ack is the same rule)."""

    __slots__ = ("limit", "pending")

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_outbound_control_frames
        self.pending = 0

    def add(self, n: int) -> bool:
        self.pending += n
        return self.pending > self.limit

    def written(self) -> None:
        self.pending = 0


class HeaderBlockWatch:
    """The HTTP/2 request-headers timeout for one downstream connection (Envoy's
    request_headers_timeout: armed at the first byte of a header block, disarmed at its last).

    The codecs report a request only once its header block is complete, so this follows the
    frame headers of what the client sends (it skips payloads: a few operations per frame):
    a block is open from a HEADERS frame without END_HEADERS until the CONTINUATION that has
    it, and while a HEADERS or CONTINUATION frame is only partly received. While a block stays
    open for ``request_headers_timeout`` seconds, ``on_timeout`` is called (the relay closes
    the connection: no other frame may come in between, RFC 9113 6.2).
    """

    __slots__ = ("timeout", "on_timeout", "skip", "partial", "block", "cur", "timer")

    def __init__(self, limits: Limits, on_timeout: Callable[[], None]) -> None:
        self.timeout = limits.request_headers_timeout
        self.on_timeout = on_timeout
        self.skip = 24  # the client connection preface comes first
        self.partial = b""  # the first bytes of a frame header cut by a read
        self.block = False  # a header block without END_HEADERS yet
        self.cur = -1  # the type of the frame being received (-1: between frames)
        self.timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        if not self.timeout:
            return
        if self.scan(data):
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(self.timeout, self._fire)
        elif self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def scan(self, data: bytes) -> bool:
        """Account for ``data``; True while a header block is incomplete."""
        n = len(data)
        pos = self.skip
        if pos >= n:  # inside one frame's payload (up to its end)
            self.skip = pos - n
            if not self.skip:
                self.cur = -1
            return self.block or self.cur == 1 or self.cur == 9  # HEADERS, CONTINUATION
        if self.partial:
            data, n = self.partial + data, n + len(self.partial)
            self.partial = b""
        block, cur = self.block, -1
        while pos + 9 <= n:  # literals, not the names above: this runs per frame
            cur = data[pos + 3]
            if cur == 1 or cur == 9 or cur == 5:  # HEADERS, CONTINUATION, PUSH_PROMISE
                block = not data[pos + 4] & 4  # END_HEADERS
            pos += 9 + (data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2])
        if pos > n:  # the last frame's payload goes on in the next read
            self.skip = pos - n
        else:
            self.skip, cur = 0, -1
            if pos < n:
                self.partial = data[pos:]
        self.block, self.cur = block, cur
        return block or cur == 1 or cur == 9

    def _fire(self) -> None:
        self.timer = None
        self.on_timeout()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
