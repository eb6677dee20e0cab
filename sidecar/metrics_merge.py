"""Metrics merging: the app's own Prometheus endpoint appended to the proxy's :15090 output.

As Istio's agent does: the injector moved the app's ``prometheus.io/port|path`` annotations to
``REMORA_APP_METRICS`` (http://127.0.0.1:PORT/PATH) and pointed the scrape annotations at the
proxy. On each scrape the proxy fetches the app's text (HTTP/1.0 on loopback as uid 1337, which
is never intercepted; a short timeout) and appends it; when the app does not answer, the
proxy's own metrics are still served and ``remora_app_metrics_scrape_failures_total`` counts.
Only on scrape, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

TIMEOUT = 2.0
MAX_BYTES = 16 * 1024 * 1024


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an app metrics URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"REMORA_APP_METRICS {url!r}: expected http://127.0.0.1:PORT/PATH")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise ValueError(f"REMORA_APP_METRICS {url!r}: no port 1-65535")
    path = (parts.path or "/metrics") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path


class AppMetrics:
    def __init__(self, url: str) -> None:
        self.host, self.port, self.path = parse_url(url)
        self.failures = 0

    async def fetch(self) -> str | None:
        try:
            return await asyncio.wait_for(self._get(), TIMEOUT)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            self.failures += 1
            return None

    async def _get(self) -> str:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {self.path} HTTP/1.0\r\nHost: {self.host}:{self.port}\r\n"
                         "Accept: text/plain;version=0.0.4\r\n\r\n".encode())
            data = await reader.read(MAX_BYTES)
            while len(data) < MAX_BYTES:
                more = await reader.read(MAX_BYTES - len(data))
                if not more:
                    break
                data += more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, sep, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)
        if not sep or len(status) < 2 or status[1] != b"200":
            raise ValueError(f"app metrics answered {head[:40]!r}")
        text = body.decode("utf-8", "replace")
        # OpenMetrics ends with "# EOF", which must not end the merged text early.
        return "\n".join(line for line in text.splitlines() if line.strip() != "# EOF") + "\n"

    def render_failures(self) -> str:
        return ("# TYPE remora_app_metrics_scrape_failures_total counter\n"
                f"remora_app_metrics_scrape_failures_total {self.failures}\n")


async def merged(own: str, app: AppMetrics | None) -> str:
    if app is None:
        return own
    text = await app.fetch()
    return own + app.render_failures() + (text or "")
