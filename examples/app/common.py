"""What every sample service shares: settings from the environment, a server, a client that
passes trace headers on (the proxies join the spans only if the app forwards them)."""

from __future__ import annotations

import logging
import os
import socket

from aiohttp import ClientError, ClientSession, ClientTimeout, web

TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled", "b3")
SERVICE = os.environ.get("SERVICE_NAME", "app")
VERSION = os.environ.get("SERVICE_VERSION", "v1")
POD = os.environ.get("POD_NAME", socket.gethostname())


def trace_headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() in TRACE_HEADERS}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def client_session(app: web.Application) -> None:
    """One pooled session per process, closed with the app."""
    async def ctx(app: web.Application):
        app["http"] = ClientSession(timeout=ClientTimeout(total=5))
        yield
        await app["http"].close()

    app.cleanup_ctx.append(ctx)


async def call(request: web.Request, url: str) -> tuple[int, dict]:
    """GET ``url`` passing the trace headers on: (status, JSON body); 503 when unreachable."""
    try:
        async with request.app["http"].get(url, headers=trace_headers(request)) as resp:
            return resp.status, await resp.json()
    except (ClientError, ValueError) as e:
        return 503, {"error": f"{url} unreachable: {e}"}


def run(path: str, handler, default_port: int) -> None:
    """Serve one route (plus /healthz) with a pooled client session for the next hop."""
    app = web.Application()
    client_session(app)
    app.router.add_get(path, handler)
    serve(app, default_port)


def serve(app: web.Application, default_port: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {SERVICE}: %(message)s")
    app.router.add_get("/healthz", healthz)
    port = int(os.environ.get("PORT", default_port))
    logging.getLogger(SERVICE).info("%s %s listening on :%d", SERVICE, VERSION, port)
    web.run_app(app, host="0.0.0.0", port=port, access_log=None, print=None,
                shutdown_timeout=1)
