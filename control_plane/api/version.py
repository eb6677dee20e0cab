"""Remora's version: one source, the package metadata (``version`` in pyproject.toml).

Every component asks here: the proxy (discovery ``hello``), the control plane (``welcome``,
``/version``), the injector (``proxyVersion`` default, ``remora.dev/status``) and ``remoractl
version``. Standard library only and cheap: the proxy imports this, and ``importlib.metadata``
costs about 6 MB and 100 modules, so the installed distribution's METADATA file is read directly.

``REMORA_VERSION_OVERRIDE`` replaces the version for one process. It exists to simulate a
"next" release on one host (the upgrade demo and the skew tests), never for production.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

DISTRIBUTION = "remora"
OVERRIDE_ENV = "REMORA_VERSION_OVERRIDE"
UNKNOWN = "0+unknown"
_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding the packages


def version() -> str:
    """This installation's version, e.g. ``0.1.0``."""
    return os.environ.get(OVERRIDE_ENV, "").strip() or _installed()


@functools.cache
def _installed() -> str:
    # A source checkout (also an editable install): pyproject.toml itself, which is never stale.
    found = _from_pyproject(_ROOT / "pyproject.toml")
    for entry in sys.path:
        found = found or _from_dist_info(Path(entry or "."))
    return found or UNKNOWN


def _from_dist_info(directory: Path) -> str | None:
    try:
        candidates = sorted(directory.glob(f"{DISTRIBUTION}-*.dist-info/METADATA"))
    except OSError:
        return None
    for meta in candidates:
        try:
            with meta.open(encoding="utf-8") as f:
                head = [next(f, "") for _ in range(8)]
        except OSError:
            continue
        fields = dict(line.rstrip("\n").split(": ", 1) for line in head if ": " in line)
        if fields.get("Name", "").lower() == DISTRIBUTION and fields.get("Version"):
            return fields["Version"]
    return None


def _from_pyproject(path: Path) -> str | None:
    """``[project] version`` of a source checkout (a regex: tomllib would cost the proxy memory)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    return m.group(1) if m else None


def minor(v: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string, or None when it does not start with X.Y."""
    m = re.match(r"^v?(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else None


def skew(proxy: str, server: str) -> int | None:
    """How many minor versions ``proxy`` is behind ``server`` (negative: ahead); None: unknown.

    Only within one major version; across majors the answer is None (unsupported)."""
    p, s = minor(proxy), minor(server)
    if p is None or s is None or p[0] != s[0]:
        return None
    return s[1] - p[1]
