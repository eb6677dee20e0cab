"""web: the front door; renders what catalog says, with the reviews version it got."""

from __future__ import annotations

import os

from aiohttp import web

from examples.app.common import POD, call, run

CATALOG_URL = os.environ.get("CATALOG_URL", "http://catalog:8080")


async def index(request: web.Request) -> web.Response:
    status, body = await call(request, f"{CATALOG_URL}/products")
    if status != 200:
        return web.json_response({"error": f"catalog: {body.get('error', status)}"}, status=502)
    reviews = body["reviews"]
    return web.json_response({"pod": POD, "product": body["product"]["title"],
                              "reviewsVersion": reviews["version"], "reviews": reviews["reviews"]})


if __name__ == "__main__":
    run("/", index, 8080)
