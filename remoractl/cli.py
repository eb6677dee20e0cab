"""``remoractl`` subcommands: each is a module with ``add_parser(subparsers)`` and ``run(args)``.

To add a subcommand, write ``remoractl/<name>.py`` with those two functions and list the module
name in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

SUBCOMMANDS: tuple[str, ...] = ("inject", "local", "demo", "proxy_status", "stat", "dashboard")


def modules() -> list[ModuleType]:
    return [importlib.import_module(f"remoractl.{name}") for name in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remoractl", description="Remora service mesh CLI")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules():
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run)
    return parser
