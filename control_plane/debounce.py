"""Debounce bursts of changes: act after ``quiet`` seconds without a change, or ``max_delay``
after the first change of a burst at the latest (so a constant trickle cannot starve pushes)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("remora.control.debounce")


class Debouncer:
    def __init__(self, action: Callable[[], Awaitable[None] | None], quiet: float = 0.1,
                 max_delay: float = 10.0) -> None:
        if quiet <= 0 or max_delay < quiet:
            raise ValueError(f"debounce: need 0 < quiet ({quiet}) <= max ({max_delay})")
        self.action = action
        self.quiet = quiet
        self.max_delay = max_delay
        self._event = asyncio.Event()
        self._first = 0.0
        self._last = 0.0
        self.runs = 0

    def trigger(self) -> None:
        """Note one change (cheap; callable from any coroutine or callback on the loop)."""
        now = asyncio.get_running_loop().time()
        if not self._event.is_set():
            self._first = now
            self._event.set()
        self._last = now

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._event.wait()
            while True:
                due = min(self._last + self.quiet, self._first + self.max_delay)
                delay = due - loop.time()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self._event.clear()
            self.runs += 1
            try:
                result = self.action()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("debounced action failed")
