"""RE2 patterns (what Istio and Envoy accept) run on Python's ``re``.

The control plane validates a pattern with ``compile_re2`` and the proxy compiles the same
text with the same function, so a pattern the control plane accepts cannot fail in a proxy.
Constructs RE2 lacks are rejected (back-references, lookaround, atomic groups, conditionals,
possessive quantifiers, ``\\Z``); RE2 spellings Python spells differently are translated
(``\\z`` → ``\\Z``, ``(?<name>`` → ``(?P<name>``, POSIX classes such as ``[[:digit:]]``);
RE2 constructs Python cannot run (``\\p{Greek}``, ``\\C``, ``\\Q..\\E``, the ``U`` flag) are
rejected with a clear message. Matching is whole-value (``fullmatch``), as Envoy's is.
"""

from __future__ import annotations

import functools
import re

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_UNSUPPORTED_ESCAPES = {
    "Z": "\\Z (RE2 has only \\z)", "p": "\\p (Unicode classes)", "P": "\\P (Unicode classes)",
    "C": "\\C", "Q": "\\Q...\\E", "E": "\\E", "G": "\\G", "k": "\\k (back-reference)",
}


class Re2Error(ValueError):
    """A pattern RE2 would reject, or one Remora's engine cannot run; the message says why."""


def translate(pattern: str) -> str:
    """The Python ``re`` spelling of an RE2 pattern; raises Re2Error for what RE2 lacks."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise Re2Error("trailing backslash")
            e = pattern[i + 1]
            if e.isdigit() and e != "0" and not in_class:
                raise Re2Error(f"back-reference \\{e} is not RE2 syntax")
            if e in _UNSUPPORTED_ESCAPES:
                raise Re2Error(f"{_UNSUPPORTED_ESCAPES[e]} is not supported")
            out.append("\\Z" if e == "z" else pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2:end] if end > 0 else ""
                negate = name.startswith("^")
                if end < 0 or name.lstrip("^") not in _POSIX or negate:
                    raise Re2Error(f"POSIX class {pattern[i:end + 2] if end > 0 else pattern[i:]!r} "
                                   "is not supported")
                out.append(_POSIX[name])
                i = end + 2
                continue
            if c == "]":
                in_class = False
            elif c == "[":
                out.append("\\[")  # literal inside a class in RE2; Python warns on nested sets
                i += 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # A leading "]" (or "^]") is a literal in both engines; copy it so it does not close.
            for lead in ("^]", "]", "^"):
                if pattern.startswith(lead, i):
                    out.append(lead.replace("]", "\\]"))
                    i += len(lead)
                    break
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2:]
            if rest.startswith(("=", "!", "<=", "<!")):
                raise Re2Error("lookaround assertions are not RE2 syntax")
            if rest.startswith(">"):
                raise Re2Error("atomic groups are not RE2 syntax")
            if rest.startswith("("):
                raise Re2Error("conditional groups are not RE2 syntax")
            if rest.startswith("P="):
                raise Re2Error("back-reference (?P=...) is not RE2 syntax")
            if rest.startswith("<"):
                out.append("(?P<")
                i += 3
                continue
            flags = re.match(r"-?[a-zA-Z-]*[:)]", rest)
            if flags and "U" in flags.group(0):
                raise Re2Error("the U (ungreedy) flag is not supported")
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise Re2Error("possessive quantifiers are not RE2 syntax")
        out.append(c)
        i += 1
    if in_class:
        raise Re2Error("missing ]")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def compile_re2(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern for ``fullmatch``; raises Re2Error naming the problem."""
    try:
        return re.compile(translate(pattern))
    except re.error as exc:
        raise Re2Error(str(exc)) from None


def check(pattern: str, path: str) -> None:
    """Raise ValueError("<path>: ...") when ``pattern`` is not usable."""
    try:
        compile_re2(pattern)
    except Re2Error as exc:
        raise ValueError(f"{path}: {pattern!r} is not a valid RE2 regex: {exc}") from None
