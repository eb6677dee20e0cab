"""The README's annotation table, generated from ``control_plane.api.annotations``.

    .venv/bin/python -m injector.docs > docs/_readme-annotations.md
"""

from __future__ import annotations

from control_plane.api.annotations import ANNOTATIONS


def readme_table() -> str:
    rows = ["| annotation | default | example | meaning |", "| --- | --- | --- | --- |"]
    for a in ANNOTATIONS:
        rows.append(f"| `{a.key}` | {a.default} | `{a.example}` | {a.meaning} (accepted: {a.accepted}) |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(readme_table(), end="")
