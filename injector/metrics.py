"""Injection counters: Prometheus text on :15014/metrics (istiod's monitoring port) and the log."""

from __future__ import annotations

import logging
from collections import Counter

from aiohttp import web

from injector.admission import DENIED, INJECTED, SKIPPED, Outcome

log = logging.getLogger("remora.injector")


class Counters:
    """Plain counts, rendered only when scraped."""

    def __init__(self) -> None:
        self.injected = 0
        self.denied = 0
        self.skipped: Counter[str] = Counter()

    def record(self, outcome: Outcome, pod_name: str) -> None:
        if outcome.result == INJECTED:
            self.injected += 1
            log.info("injected pod %s (totals: %s)", pod_name, self.summary())
        elif outcome.result == SKIPPED:
            self.skipped[outcome.reason] += 1
            why = outcome.reason + (f" ({outcome.message})" if outcome.message else "")
            log.info("skipped pod %s: %s (totals: %s)", pod_name, why, self.summary())
        elif outcome.result == DENIED:
            self.denied += 1
            log.warning("denied pod %s: %s (totals: %s)", pod_name, outcome.message, self.summary())

    def summary(self) -> str:
        skipped = ",".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return f"injected={self.injected} denied={self.denied} skipped[{skipped}]"

    def prometheus(self) -> str:
        lines = [
            "# HELP remora_injector_pods_injected_total Pods that got a sidecar.",
            "# TYPE remora_injector_pods_injected_total counter",
            f"remora_injector_pods_injected_total {self.injected}",
            "# HELP remora_injector_pods_skipped_total Pods left alone, by reason.",
            "# TYPE remora_injector_pods_skipped_total counter",
            *(f'remora_injector_pods_skipped_total{{reason="{r}"}} {n}'
              for r, n in sorted(self.skipped.items())),
            "# HELP remora_injector_pods_denied_total Pods denied for an invalid setting.",
            "# TYPE remora_injector_pods_denied_total counter",
            f"remora_injector_pods_denied_total {self.denied}",
        ]
        return "\n".join(lines) + "\n"


async def serve_metrics(counters: Counters, host: str, port: int,
                        version: dict[str, str] | None = None) -> web.AppRunner:
    """Start /metrics (and /version: what this injector injects now, for ``remoractl
    version`` and ``proxy-status``); the caller cleans the returned runner up."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=counters.prometheus(), content_type="text/plain", charset="utf-8")

    async def version_info(_: web.Request) -> web.Response:
        return web.json_response(version or {})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version_info)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
