"""The runtime failure of remora-init (exit 1): what is wrong and how to fix it, one line."""

from __future__ import annotations


class InitError(RuntimeError):
    """An environment or kernel failure. ``str()`` is ``<what is wrong>; <how to fix it>``."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")
