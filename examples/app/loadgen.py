"""loadgen: calls web at a steady rate and logs what it saw every few seconds.

    python3 -m examples.app.loadgen --url http://web:8080/ --rate 20 [--duration 0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import time
import uuid

from aiohttp import ClientError, ClientSession, ClientTimeout

log = logging.getLogger("loadgen")


async def one(session: ClientSession, url: str, seen: collections.Counter) -> None:
    try:
        async with session.get(url, headers={"x-request-id": str(uuid.uuid4())}) as resp:
            body = await resp.json() if resp.status == 200 else {}
            seen[f"{resp.status} reviews-{body.get('reviewsVersion', '-')}"] += 1
    except (ClientError, TimeoutError, ValueError) as e:
        seen[f"error {type(e).__name__}"] += 1


async def run(url: str, rate: float, duration: float, report: float) -> None:
    seen: collections.Counter = collections.Counter()
    start = last = time.monotonic()
    tasks: set[asyncio.Task] = set()
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        n = 0
        while not duration or time.monotonic() - start < duration:
            # Open loop: request n goes out at start + n/rate, whatever the answers do.
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            n += 1
            t = asyncio.create_task(one(session, url, seen))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            if time.monotonic() - last >= report:
                last = time.monotonic()
                log.info("sent %d: %s", n, ", ".join(f"{k}={v}" for k, v in sorted(seen.items())))
        await asyncio.gather(*tasks)
    log.info("done, sent %d: %s", n, ", ".join(f"{k}={v}" for k, v in sorted(seen.items())))


def main() -> None:
    p = argparse.ArgumentParser(prog="loadgen")
    p.add_argument("--url", default="http://web:8080/")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until stopped)")
    p.add_argument("--report", type=float, default=5.0, help="seconds between log lines")
    args = p.parse_args()
    if args.rate <= 0:
        p.error("--rate must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loadgen: %(message)s")
    asyncio.run(run(args.url, args.rate, args.duration, args.report))


if __name__ == "__main__":
    main()
