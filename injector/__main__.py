"""Entry point of `remora-injector`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("remora-injector: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
