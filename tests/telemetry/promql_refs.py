"""What a PromQL expression refers to: metric names, and label names per selector and grouping.

A small lexer, enough for dashboards: it knows strings, numbers, durations, Grafana variables
($x, ${x}), identifiers, and the punctuation PromQL uses. Unbalanced brackets raise ValueError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "charts" / "remora" / "dashboards")
                    .glob("*.json"))

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<duration>\[[^\]]*\])
  | (?P<var>\$\{[^}]+\}|\$[A-Za-z_]\w*)
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
""", re.VERBOSE)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


@dataclass
class Refs:
    metrics: list[tuple[str, set[str]]] = field(default_factory=list)  # (name, matcher labels)
    grouping: set[str] = field(default_factory=set)  # labels in by(...)/without(...)/on(...)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def refs(expr: str) -> Refs:
    toks = tokens(expr)
    depth = {"(": 0, "{": 0}
    r = Refs()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "op" and text in "({":
            depth[text] += 1
        elif kind == "op" and text in ")}":
            key = "(" if text == ")" else "{"
            depth[key] -= 1
            if depth[key] < 0:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "ident" and text in ("by", "without", "on", "ignoring", "group_left",
                                          "group_right") and nxt == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    r.grouping.add(toks[j][1])
                j += 1
            i = j + 1
            continue
        elif kind == "ident" and text not in KEYWORDS and nxt != "(":
            labels: set[str] = set()
            if nxt == "{":
                j = i + 2
                while toks[j][1] != "}":
                    if toks[j][0] == "ident" and toks[j + 1][1] in ("=", "!=", "=~", "!~"):
                        labels.add(toks[j][1])
                    j += 1
                i = j + 1
                r.metrics.append((text, labels))
                continue
            r.metrics.append((text, labels))
        i += 1
    if depth["("] or depth["{"]:
        raise ValueError(f"unbalanced brackets in {expr!r}")
    return r


def label_values_query(query: str) -> tuple[str, str] | None:
    """Grafana's label_values(selector, label): (selector expression, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", query)
    return (m.group(1), m.group(2)) if m else None


def expressions(dashboard: dict) -> list[str]:
    """Every panel query and every label_values() selector of a Grafana dashboard."""
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            found = label_values_query(v["query"])
            if found is None:
                raise ValueError(f"variable {v['name']}: not label_values(selector, label)")
            out.append(found[0])
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())
