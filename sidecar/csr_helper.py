"""Make a workload key and its CSR in a short-lived process, so the proxy never loads cryptography.

    python -m sidecar.csr_helper --identity spiffe://td/ns/N/sa/S --key-out DIR/key.pending.pem

Writes the key (mode 0600, atomically) to --key-out and prints the PEM CSR on stdout.
The key never leaves the pod: the proxy reads it back from the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sidecar.csr_helper", description=__doc__)
    p.add_argument("--identity", required=True, help="SPIFFE ID to ask for")
    p.add_argument("--key-out", required=True, type=Path, help="where to write the new key (0600)")
    args = p.parse_args(argv)
    from control_plane.api import identity

    try:
        identity.parse_spiffe_id(args.identity)
    except ValueError as exc:
        print(f"csr_helper: {exc}", file=sys.stderr)
        return 2
    key = identity.generate_key()
    try:
        write_private(args.key_out, identity.key_to_pem(key))
    except OSError as exc:
        print(f"csr_helper: cannot write the key to {args.key_out}: {exc.strerror}", file=sys.stderr)
        return 1
    sys.stdout.write(identity.make_csr(key, args.identity).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
