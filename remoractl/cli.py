"""``remoractl`` subcommands: each is a module with ``add_parser(subparsers)`` and ``run(args)``.

To add a subcommand, write ``remoractl/<name>.py`` with those two functions and list the module
name in ``SUBCOMMANDS``. A command that talks to the control plane calls
``remoractl.target.add_target_args(parser)`` and ``remoractl.target.resolve(args).get(path)``
(``.injector()`` for the injector next to it): it then finds the local cluster or the
kubeconfig's cluster like the others, and the test of every live command's one-line error picks
it up by itself. Every ``run`` is wrapped by ``target.one_line``: a TargetError is one line on
stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from remoractl.target import one_line

SUBCOMMANDS: tuple[str, ...] = ("inject", "local", "demo", "proxy_status", "upgrade")
SUBCOMMANDS += ("version", "analyze", "check")
SUBCOMMANDS += ("stat", "dashboard")


def modules() -> list[ModuleType]:
    return [importlib.import_module(f"remoractl.{name}") for name in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remoractl", description="Remora service mesh CLI")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules():
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=one_line(module.run))  # a TargetError is one line, exit code 1
    return parser
