"""StringMatch evaluation, shared by route matching and CORS origins."""

from __future__ import annotations

from control_plane.api.model import StringMatch
from control_plane.api.re2 import compile_re2


def string_matches(m: StringMatch, value: str, ignore_case: bool = False) -> bool:
    """Exact, prefix or whole-value RE2 regex; a match with none set only needs a value."""
    if m.exact is not None:
        return value.lower() == m.exact.lower() if ignore_case else value == m.exact
    if m.prefix is not None:
        return value.lower().startswith(m.prefix.lower()) if ignore_case else value.startswith(m.prefix)
    if m.regex is not None:
        return compile_re2(m.regex).fullmatch(value) is not None
    return True
