"""Entry point of `remora-init`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("remora-init: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
