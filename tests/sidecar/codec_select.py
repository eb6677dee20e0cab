"""Run the in-process HTTP/2 relays on one codec: the relays make their codecs through
h2select, chosen per process, so a test selects one and puts the previous choice back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from sidecar.http import h2select, ngcodec


@contextlib.contextmanager
def selected(name: str) -> Iterator[str]:
    """``name`` (nghttp2 or h2) for the duration; skips when the native codec is not built."""
    if name == h2select.NGHTTP2 and not ngcodec.available():
        pytest.skip("the native codec is not built (make venv builds it)")
    before = h2select.chosen()
    h2select.select(name)
    try:
        yield name
    finally:
        h2select.select(before)
