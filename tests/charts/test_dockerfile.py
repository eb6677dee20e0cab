"""The Dockerfile, checked statically (no docker engine here): base, iptables, user, entry points."""

from __future__ import annotations

import fnmatch
import importlib
import shlex
import tomllib

import pytest
from chart_kit import REPO

from control_plane.api.ports import PROXY_GID, PROXY_UID

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued RUN
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        instruction, _, rest = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "a Dockerfile starts with FROM"
        stages[-1].append((instruction.upper(), rest.strip()))
    assert not logical, "the last instruction ends with a continuation backslash"
    return stages


def ignored(path: str, patterns: list[str]) -> bool:
    """Is ``path`` (relative, with /) left out of the build context by .dockerignore?"""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.replace("**/", ""))
               for p in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def _runs(stage: list[tuple[str, str]]) -> str:
    return " && ".join(args for instr, args in stage if instr == "RUN")


def test_every_stage_is_python_3_11_slim(stages: list[list[tuple[str, str]]]) -> None:
    assert len(stages) >= 1
    for stage in stages:
        base = stage[0][1].split()[0]
        assert base == "python:3.11-slim", base


def test_runtime_has_legacy_iptables_and_runs_as_1337(stages: list[list[tuple[str, str]]]) -> None:
    runtime = stages[-1]
    runs = _runs(runtime)
    apt = [shlex.split(cmd) for cmd in runs.split("&&") if "apt-get install" in cmd]
    assert any("iptables" in words for words in apt), "remora-init needs libiptc from iptables"
    assert "iptables-legacy" in runs  # python-iptables writes the legacy tables
    assert f"useradd --uid {PROXY_UID} --gid {PROXY_GID}" in runs
    users = [args for instr, args in runtime if instr == "USER"]
    assert users and users[-1] in (str(PROXY_UID), f"{PROXY_UID}:{PROXY_GID}")
    assert "gcc" not in runs  # the compiler stays in the build stage


def test_the_project_itself_is_installed(stages: list[list[tuple[str, str]]]) -> None:
    build = stages[0]
    assert ("COPY", ". /src") in build
    workdir = [args for instr, args in build if instr == "WORKDIR"][-1]
    assert workdir == "/src"
    assert any(shlex.split(cmd)[:2] == ["pip", "wheel"] and shlex.split(cmd)[-1] == "."
               for cmd in _runs(build).split("&&"))
    project = PYPROJECT["project"]["name"]
    installs = [shlex.split(cmd) for cmd in _runs(stages[-1]).split("&&") if "pip install" in cmd]
    assert any(words[-1] == project and "--no-index" in words for words in installs)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_is_in_the_build_context(script: str, ignore_patterns: list[str]) -> None:
    module, _, func = SCRIPTS[script].partition(":")
    package = module.split(".")[0]
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatchcase(package, pat) for pat in includes), f"pip install . skips {package}"
    source = module.replace(".", "/") + ".py"
    assert (REPO / source).is_file()
    assert not ignored(source, ignore_patterns), f".dockerignore leaves out {source}"
    assert callable(getattr(importlib.import_module(module), func))


def test_dockerignore_keeps_the_context_small_but_buildable(ignore_patterns: list[str]) -> None:
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "perf/run",
                 "sidecar/__pycache__/x.pyc"):
        assert ignored(path, ignore_patterns), path
    for path in ("pyproject.toml", PYPROJECT["project"]["readme"], "control_plane/api/ports.py"):
        assert not ignored(path, ignore_patterns), path
