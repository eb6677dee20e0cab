"""A record of every process group the daemon starts, so `down` can end them after a crash.

Each record is ``<pids dir>/<pid>`` holding the process's start time (field 22 of
/proc/<pid>/stat): a recycled pid belonging to someone else's process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rpartition(")")[2].split()[19]


class PidRecords:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def record(self, pid: int, what: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / str(pid)).write_text(f"{start_time(pid) or ''} {what}\n")

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / str(pid)).unlink()

    def alive(self) -> list[int]:
        """Recorded process groups whose leader is still the process that was recorded."""
        out = []
        for f in self.dir.glob("[0-9]*") if self.dir.is_dir() else []:
            recorded = f.read_text().split(" ", 1)[0]
            if recorded and start_time(int(f.name)) == recorded:
                out.append(int(f.name))
        return out

    def kill_all(self, grace: float = 3.0) -> list[int]:
        """SIGTERM every recorded group still alive, SIGKILL after ``grace``; returns the pids."""
        pids = self.alive()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            deadline = time.monotonic() + grace
            while sig == signal.SIGTERM and time.monotonic() < deadline and self.alive():
                time.sleep(0.05)
        return pids


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"
