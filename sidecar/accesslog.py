"""Access logs: one line per HTTP request or opaque TCP connection, to stdout.

``text`` is Envoy's default format, followed by four fields Istio's default format also
carries (upstream cluster, the two peers' SPIFFE IDs) and the trace id:

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
    "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% "%DOWNSTREAM_PEER_URI_SAN%" "%UPSTREAM_PEER_URI_SAN%"
    "%TRACE_ID%"

(one line; an absent value is ``-``). ``json`` is one object per line with Envoy's/Istio's
JSON key names. Lines are buffered and written with one ``write`` per event-loop turn at
most every 100 ms (or at 64 KiB); past 4 MiB waiting (stdout not keeping up) lines are
dropped and ``remora_access_log_dropped_total`` counts them, so logging never holds the
event loop or memory hostage.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

OFF, TEXT, JSON = "off", "text", "json"
FORMATS = (OFF, TEXT, JSON)
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024
MAX_PENDING = 4 * 1024 * 1024
_WANTED = {b"x-forwarded-for": "x_forwarded_for", b"user-agent": "user_agent",
           b"x-request-id": "request_id", b"host": "authority", b":authority": "authority"}
TEXT_FIELDS = ("start_time", "method", "path", "protocol", "response_code", "response_flags",
               "bytes_received", "bytes_sent", "duration", "upstream_service_time",
               "x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
               "upstream_cluster", "downstream_peer_uri_san", "upstream_peer_uri_san", "trace_id")


def _start_time(epoch: float) -> str:
    ms = int(epoch * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{ms:03d}Z"


class AccessLog:
    def __init__(self, fmt: str, fd: int = 1) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format {fmt!r}: accepted: {', '.join(FORMATS)}")
        self.json = fmt == JSON
        self.fd = fd
        self.pending: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None

    def request(self, start: float, method: bytes, path: bytes, protocol: str, status: int,
                flags: str, received: int, sent: int, duration_s: float,
                headers: list[tuple[bytes, bytes]], request_id: bytes, upstream_host: str,
                upstream_cluster: str, downstream_peer: str | None, upstream_peer: str | None,
                trace_id: int = 0, authority: bytes = b"") -> None:
        """One finished HTTP exchange (``start`` is wall-clock seconds; bytes are body bytes).
        ``authority``: HTTP/2's :authority (not in ``headers``); HTTP/1.1's comes from Host."""
        rec: dict[str, str | int | None] = {
            "start_time": _start_time(start), "method": method.decode("latin-1"),
            "path": path.decode("latin-1"), "protocol": protocol, "response_code": status,
            "response_flags": flags, "bytes_received": received, "bytes_sent": sent,
            "duration": int(duration_s * 1000), "upstream_service_time": None,
            "x_forwarded_for": None, "user_agent": None,
            "request_id": request_id.decode("latin-1") if request_id else None,
            "authority": authority.decode("latin-1") if authority else None,
            "upstream_host": upstream_host or None,
            "upstream_cluster": upstream_cluster, "downstream_peer_uri_san": downstream_peer,
            "upstream_peer_uri_san": upstream_peer, "trace_id": f"{trace_id:032x}" if trace_id else None,
        }
        for name, value in headers:
            key = _WANTED.get(name.lower())
            if key is not None and rec[key] is None:
                rec[key] = value.decode("latin-1")
        self._emit(rec)

    def tcp(self, start: float, received: int, sent: int, duration_s: float, upstream_host: str,
            upstream_cluster: str, downstream_peer: str | None, upstream_peer: str | None) -> None:
        """One closed opaque TCP connection (Envoy's TCP line: method, path, protocol are -)."""
        self._emit({
            "start_time": _start_time(start), "method": None, "path": None, "protocol": None,
            "response_code": 0, "response_flags": "-", "bytes_received": received,
            "bytes_sent": sent, "duration": int(duration_s * 1000),
            "upstream_service_time": None, "x_forwarded_for": None, "user_agent": None,
            "request_id": None, "authority": None, "upstream_host": upstream_host or None,
            "upstream_cluster": upstream_cluster, "downstream_peer_uri_san": downstream_peer,
            "upstream_peer_uri_san": upstream_peer, "trace_id": None,
        })

    def _emit(self, rec: dict[str, Any]) -> None:
        if self.json:
            line = json.dumps(rec, separators=(",", ":")) + "\n"
        else:
            v = [("-" if rec[k] is None else str(rec[k])) for k in TEXT_FIELDS]
            line = (f'[{v[0]}] "{v[1]} {v[2]} {v[3]}" {v[4]} {v[5]} {v[6]} {v[7]} {v[8]} {v[9]} '
                    f'"{v[10]}" "{v[11]}" "{v[12]}" "{v[13]}" "{v[14]}" {v[15]} "{v[16]}" '
                    f'"{v[17]}" "{v[18]}"\n')
        data = line.encode("utf-8", "replace")
        if self.size + len(data) > MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(data)
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (tests, shutdown): write now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending, self.size = [], 0
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            self.dropped += 1

    def render(self) -> str:
        return ("# TYPE remora_access_log_dropped_total counter\n"
                f"remora_access_log_dropped_total {self.dropped}\n")
