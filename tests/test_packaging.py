"""pyproject.toml's license is an SPDX expression (PEP 639), the form setuptools >= 77 wants:
the TOML-table form is deprecated and stops building in 2027. The build requirement must
then be setuptools >= 77 (older ones reject the string), for `make venv` and the Dockerfile's
isolated `pip wheel .` alike; the installed metadata carries License-Expression."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_setuptools_can_read_it() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    (req,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)", req)
    assert m and int(m.group(1)) >= 77, req
    assert importlib.metadata.metadata("remora").get("License-Expression") == "Apache-2.0"
