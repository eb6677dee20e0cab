"""web: the front door; renders what catalog says, with the reviews version it got."""

from __future__ import annotations

import os

from aiohttp import ClientError, web

from examples.app.common import POD, client_session, serve, trace_headers

CATALOG_URL = os.environ.get("CATALOG_URL", "http://catalog:8080")


async def index(request: web.Request) -> web.Response:
    try:
        async with request.app["http"].get(f"{CATALOG_URL}/products",
                                           headers=trace_headers(request)) as resp:
            body = await resp.json()
            status = resp.status
    except (ClientError, ValueError) as e:
        return web.json_response({"error": f"catalog unreachable: {e}"}, status=503)
    if status != 200:
        return web.json_response({"error": body.get("error", status)}, status=502)
    reviews = body["reviews"]
    return web.json_response({"pod": POD, "product": body["product"]["title"],
                              "reviewsVersion": reviews["version"], "reviews": reviews["reviews"]})


def main() -> None:
    app = web.Application()
    client_session(app)
    app.router.add_get("/", index)
    serve(app, 8080)


if __name__ == "__main__":
    main()
