"""``remoractl dashboard``: a live web page of the mesh, served on 127.0.0.1 by the CLI.

The service graph with each edge's request rate, success rate, p50/p99 latency and mTLS
state, per-workload golden metrics and each proxy's sync status, redrawn every two seconds.
The numbers are the proxies' own (``:15090``), scraped every ``--interval`` seconds, rates
over the last ``--window`` seconds. Works on the local cluster with no setup; elsewhere
(Kubernetes) point it at a Prometheus that scrapes the proxies (``--prometheus URL``, e.g.
after ``kubectl port-forward``); the control plane is found as by every live command
(the kubeconfig's context, ``--context``, or ``--control-plane-url``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from aiohttp import web

from remoractl import meshsource
from remoractl.dashboard_page import PAGE

DEFAULT_PORT = 20001  # Kiali's port


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("dashboard", help="live mesh dashboard in the browser (127.0.0.1)",
                              description=__doc__)
    meshsource.add_arguments(p)
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    p.add_argument("--window", type=float, default=10.0, help="seconds the rates are computed over")
    return p


class Dashboard:
    def __init__(self, source: meshsource.Source, interval: float, window: float) -> None:
        self.source, self.interval, self.window = source, interval, window
        self.latest: dict[str, Any] = {
            "source": source.describe(), "window_s": 0.0, "edges": [], "workloads": [],
            "proxies": [], "pods": [], "scrape_errors": {}, "proxies_error": "no scrape yet"}

    async def sample_forever(self) -> None:
        while True:
            try:
                self.latest = await self.source.current(self.window)
            except meshsource.SourceError as e:
                self.latest = {**self.latest, "proxies_error": str(e)}
            await asyncio.sleep(self.interval)

    def graph(self) -> dict[str, Any]:
        return self.latest

    def app(self) -> web.Application:
        async def index(request: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def graph(request: web.Request) -> web.Response:
            return web.json_response(self.graph())

        app = web.Application()
        app.add_routes([web.get("/", index), web.get("/api/graph", graph)])
        return app


async def serve(args: argparse.Namespace, source: meshsource.Source) -> None:
    dash = Dashboard(source, args.interval, args.window)
    runner = web.AppRunner(dash.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.address, args.port)
    await site.start()
    port = runner.addresses[0][1]
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"Remora dashboard: http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    task = asyncio.create_task(dash.sample_forever())
    try:
        await asyncio.Event().wait()
    finally:
        task.cancel()
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.window < args.interval:
        print("remoractl dashboard: accepted: --interval > 0 and --window >= --interval",
              file=sys.stderr)
        return 1
    try:  # the source must answer once before the page is offered
        source = meshsource.from_args(args)
        asyncio.run(source.current(args.window))
    except meshsource.SourceError as e:
        print(f"remoractl dashboard: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(args, source))
    except OSError as e:
        print(f"remoractl dashboard: cannot listen on {args.address}:{args.port}: {e.strerror}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
