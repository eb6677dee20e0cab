"""Entry point of ``remoractl``; the subcommands are listed in ``remoractl/cli.py``."""

from __future__ import annotations

import sys

from remoractl.cli import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
