"""Which HTTP/2 codec the proxy uses: the libnghttp2 one when it was built, else ``h2``.

``REMORA_H2_CODEC`` (``nghttp2`` or ``h2``) forces one, so the whole test suite can run on
either and the benchmarks can compare them. The choice is logged once at start and shown
as ``remora_http2_codec_info{codec=...}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from . import ngcodec

log = logging.getLogger("remora.http2")

NGHTTP2 = "nghttp2"
H2 = "h2"
CODECS = (NGHTTP2, H2)


class CodecChoiceError(ValueError):
    pass


def choose(requested: str | None = None) -> str:
    """The codec's name: ``requested`` (or REMORA_H2_CODEC) if usable, else the best built."""
    requested = requested if requested is not None else os.environ.get("REMORA_H2_CODEC", "")
    if requested and requested not in CODECS:
        raise CodecChoiceError(f"REMORA_H2_CODEC={requested!r}: expected one of {', '.join(CODECS)}")
    if requested == NGHTTP2 and not ngcodec.available():
        raise CodecChoiceError("REMORA_H2_CODEC=nghttp2, but the native codec is not built "
                               "(install libnghttp2-dev and reinstall: make venv)")
    if requested:
        return requested
    return NGHTTP2 if ngcodec.available() else H2


def factory(name: str) -> Callable[[bool], Any]:
    """``factory(name)(client_side)`` makes one connection's codec."""
    if name == NGHTTP2:
        return ngcodec.NgH2Codec
    from .h2codec import H2Codec  # h2 is loaded only where it is the codec

    return H2Codec


_chosen: str | None = None
_factory: Callable[[bool], Any] | None = None


def select(name: str | None = None) -> str:
    """Choose the codec for this process (at start; REMORA_H2_CODEC or the best built); the
    runtime logs the choice once it serves."""
    global _chosen, _factory
    _chosen = choose(name)
    _factory = factory(_chosen)
    return _chosen


def chosen() -> str:
    return _chosen if _chosen is not None else select()


def new_codec(client_side: bool) -> Any:
    """One connection's codec, of the kind chosen for this process."""
    f = _factory
    if f is None:
        select()
        f = _factory
    assert f is not None
    return f(client_side)


def describe(name: str) -> str:
    if name == NGHTTP2:
        return f"nghttp2 {ngcodec.library_version()} (native)"
    return "h2 (pure Python" + ("" if ngcodec.available() else "; the native codec is not built") + ")"
