"""glibc malloc tuning for the data path.

uvloop's TLS transport reads decrypted bytes with ``SSLObject.read(256 KiB)``: CPython
allocates a 256 KiB bytes object and shrinks it to the few hundred bytes that came. Above
glibc's mmap threshold (128 KiB until a large block is freed) every such read costs an
``mmap`` + ``mremap`` + ``munmap`` and page faults on fresh zeroed pages: one set per
request. Serving these from the heap instead makes them a pointer bump. The trim threshold
is raised with it, or the freed tail of each block would be handed back with ``brk`` every
time; it still bounds how much free heap the process keeps (a few MiB).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("remora.memtune")
M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # above the 256 KiB TLS read buffer
TRIM_THRESHOLD = 4 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the thresholds; False (and a debug line) where this is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc is among them
    except (OSError, AttributeError):
        log.debug("not glibc: malloc thresholds left as they are")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
