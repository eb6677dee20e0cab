"""The chart's ``mesh.proxyLimits`` in values.yaml: its commented defaults, written from the one
source of truth (``sidecar/http/limits.py``: keys, defaults, variables, minimums) by
``scripts/gen-values-schema``, which also puts its schema (``limits.values_schema``) into
values.schema.json. A test checks that the committed values.yaml is current.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.http import limits

VALUES_FILE = Path(__file__).resolve().parent.parent / "charts" / "remora" / "values.yaml"
BEGIN = "  # proxyLimits: "  # the generated block runs from this line ...
END = "  proxyLimits: {}"  # ... to this one (the value itself, empty: every default)


def block() -> list[str]:
    defaults = limits.Limits()
    lines = [BEGIN + "the proxies' HTTP limits (docs/security.md \"Limits\"); a key set here",
             "  # replaces its default below in every injected proxy (generated from",
             "  # sidecar/http/limits.py by scripts/gen-values-schema; do not edit these lines):"]
    for name, (key, var, minimum) in limits.SPEC.items():
        value = getattr(defaults, name)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"  #   {key}: {shown}".ljust(50) + f"# {var}, >= {minimum:g}")
    return [*lines, END]


def render(text: str) -> str:
    """values.yaml ``text`` with the block regenerated (placed at the end of ``mesh`` if absent)."""
    lines = text.split("\n")
    if END in lines:
        end = lines.index(END)
        start = next(i for i in range(end, -1, -1) if lines[i].startswith(BEGIN))
        lines[start:end + 1] = block()
    else:  # after the last line indented under "mesh:"
        at = lines.index("mesh:") + 1
        while at < len(lines) and lines[at].startswith("  "):
            at += 1
        lines[at:at] = block()
    return "\n".join(lines)


def main() -> None:
    VALUES_FILE.write_text(render(VALUES_FILE.read_text()))


if __name__ == "__main__":
    main()
