"""glibc malloc tuning for the data path.

uvloop's TLS transport reads decrypted bytes with ``SSLObject.read(256 KiB)``: CPython
allocates a 256 KiB bytes object and shrinks it to the few hundred bytes that came. Above
glibc's mmap threshold (128 KiB until a large block is freed) every such read costs an
``mmap`` + ``mremap`` + ``munmap`` and page faults on fresh zeroed pages: one set per
request. Serving these from the heap instead makes them a pointer bump. The trim threshold
is raised with it, or the freed tail of each block would be handed back with ``brk`` every
time; it still bounds how much free heap the process keeps (a few MiB).

The thresholds are glibc tunables, read when a process starts: ``exec_tuned`` starts the
proxy again (``execv``: same pid, before anything is bound) with ``GLIBC_TUNABLES`` set.
Calling ``mallopt`` through ctypes instead would keep ctypes and libffi in every proxy
(about 0.6 MB of its idle RSS); ``tune_malloc`` does that only where the exec failed.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

log = logging.getLogger("remora.memtune")
M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # above the 256 KiB TLS read buffer
TRIM_THRESHOLD = 4 * 1024 * 1024
TUNABLES = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:"
            f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}")
# Set for the second start only; its value is the GLIBC_TUNABLES the first start had.
STARTED_TUNED = "REMORA_MALLOC_TUNED"


def exec_tuned() -> bool:
    """Replace this process with itself under the malloc tunables (does not return), unless
    it is that second start: then restore the caller's environment for our children and
    return True. False: the exec failed; call ``tune_malloc``."""
    prior = os.environ.pop(STARTED_TUNED, None)
    if prior is not None:
        if prior:
            os.environ["GLIBC_TUNABLES"] = prior
        else:
            os.environ.pop("GLIBC_TUNABLES", None)
        return True
    env = dict(os.environ)
    had = env.get("GLIBC_TUNABLES", "")
    env[STARTED_TUNED] = had
    env["GLIBC_TUNABLES"] = f"{had}:{TUNABLES}" if had else TUNABLES
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as e:
        log.debug("could not start again with malloc tunables (%s): using mallopt", e)
    return False


def tune_malloc() -> bool:
    """Apply the thresholds with mallopt; False (and a debug line) where this is not glibc."""
    import ctypes  # only here: see the module's docstring

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc is among them
    except (OSError, AttributeError):
        log.debug("not glibc: malloc thresholds left as they are")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def settle() -> None:
    """Once started: collect start-up garbage and freeze what is left (it lives as long as
    the process, so later collections need not walk it again)."""
    gc.collect()
    gc.freeze()
