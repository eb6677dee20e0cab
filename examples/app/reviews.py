"""reviews: the leaf service. v1 has no ratings, v2 adds stars; every answer names its version."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from examples.app.common import POD, VERSION, run

REVIEWS = {
    "1": ["An extremely entertaining read.", "Absolutely fun and entertaining."],
    "2": ["Solid, if a little long."],
}


async def reviews(request: web.Request) -> web.Response:
    product = request.match_info["product"]
    body: dict[str, Any] = {"product": product, "version": VERSION, "pod": POD,
            "reviews": [{"text": t} for t in REVIEWS.get(product, [])]}
    if VERSION != "v1":
        for r in body["reviews"]:
            r["stars"] = 5
    return web.json_response(body)


if __name__ == "__main__":
    run("/reviews/{product}", reviews, 9080)
