"""One version source: pyproject.toml's ``version`` (the package metadata). Everything else
either reads it (control_plane/api/version.py) or is checked against it here."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from control_plane.api import version as v

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("control_plane", "sidecar", "injector", "init_container", "local_cluster", "remoractl")


def test_every_component_reports_the_package_version() -> None:
    want = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert v.version() == want
    chart = yaml.safe_load((REPO / "charts/remora/Chart.yaml").read_text())
    assert chart["appVersion"] == chart["version"] == want, "bump charts/remora/Chart.yaml with pyproject.toml"
    from control_plane import server
    from injector import meshconfig
    from sidecar import discovery
    assert server.SERVER_VERSION == discovery.PROXY_VERSION == meshconfig.MeshConfig().proxy_version == want


def test_no_version_literal_in_the_product_code() -> None:
    want = v.version()
    literal = re.compile(rf"""["']{re.escape(want)}["']""")
    found = [f"{p.relative_to(REPO)}:{i}" for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []


def test_override_and_metadata_fallbacks(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "from control_plane.api.version import version; print(version())"],
                         capture_output=True, text=True, check=True, env={"REMORA_VERSION_OVERRIDE": "9.9.9"},
                         cwd=REPO).stdout.strip()
    assert out == "9.9.9"
    info = tmp_path / "remora-3.4.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: remora\nVersion: 3.4.5\n")
    assert v._from_dist_info(tmp_path) == "3.4.5"
    assert v._from_pyproject(tmp_path / "missing.toml") is None
    assert (v.skew("0.1.3", "0.2.0"), v.skew("0.3.0", "0.2.1"), v.skew("1.0.0", "0.9.0")) == (1, -1, None)
