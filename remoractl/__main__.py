"""Entry point of ``remoractl``; the subcommands are listed in ``remoractl/cli.py``."""

from __future__ import annotations

import os
import sys

from remoractl.cli import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a user sees one line, never a traceback (REMORACTL_DEBUG=1 shows it)
        if os.environ.get("REMORACTL_DEBUG"):
            raise
        what = " ".join(str(exc).split()) or type(exc).__name__
        print(f"remoractl {args.command}: {what} ({type(exc).__name__}; "
              "REMORACTL_DEBUG=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
