"""catalog: lists products and asks reviews about each (reviews is split 80/20 by the mesh)."""

from __future__ import annotations

import os

from aiohttp import web

from examples.app.common import POD, call, run

REVIEWS_URL = os.environ.get("REVIEWS_URL", "http://reviews:9080")
PRODUCTS = [{"id": "1", "title": "The Comedy of Errors"}, {"id": "2", "title": "Hamlet"}]


async def products(request: web.Request) -> web.Response:
    product = PRODUCTS[hash(request.headers.get("x-request-id", "")) % len(PRODUCTS)]
    status, reviews = await call(request, f"{REVIEWS_URL}/reviews/{product['id']}")
    if status != 200:
        return web.json_response({"error": f"reviews: {reviews.get('error', status)}"}, status=502)
    return web.json_response({"pod": POD, "product": product, "reviews": reviews})


if __name__ == "__main__":
    run("/products", products, 8080)
