"""catalog: lists products and asks reviews about each (reviews is split 80/20 by the mesh)."""

from __future__ import annotations

import os

from aiohttp import ClientError, web

from examples.app.common import POD, client_session, serve, trace_headers

REVIEWS_URL = os.environ.get("REVIEWS_URL", "http://reviews:9080")
PRODUCTS = [{"id": "1", "title": "The Comedy of Errors"}, {"id": "2", "title": "Hamlet"}]


async def products(request: web.Request) -> web.Response:
    product = PRODUCTS[hash(request.headers.get("x-request-id", "")) % len(PRODUCTS)]
    try:
        async with request.app["http"].get(f"{REVIEWS_URL}/reviews/{product['id']}",
                                           headers=trace_headers(request)) as resp:
            if resp.status != 200:
                return web.json_response({"error": f"reviews answered {resp.status}"}, status=502)
            reviews = await resp.json()
    except ClientError as e:
        return web.json_response({"error": f"reviews unreachable: {e}"}, status=503)
    return web.json_response({"pod": POD, "product": product, "reviews": reviews})


def main() -> None:
    app = web.Application()
    client_session(app)
    app.router.add_get("/products", products)
    serve(app, 8080)


if __name__ == "__main__":
    main()
