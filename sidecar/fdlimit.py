"""Open-file limits: raise the soft RLIMIT_NOFILE to the hard limit at start (a proxy holds two
descriptors per relayed connection), and the accept back-off used when the limit is reached."""

from __future__ import annotations

import errno
import logging
import resource

log = logging.getLogger("remora.proxy")
# accept() errors that mean "no descriptor or memory for a new socket right now": retrying at
# once spins (the listening socket stays readable), so the listener pauses instead.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF = 0.1  # seconds a listener stops accepting after such an error


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile() -> tuple[int, int]:
    """Set the soft limit to the hard limit (capped by fs.nr_open); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
    return soft, hard
