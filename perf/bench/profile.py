"""py-spy profiles of the proxies during a throughput run, summarized as top functions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    venv = Path(sys.executable).parent / "py-spy"
    return str(venv) if venv.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, raw_path: Path) -> subprocess.Popen:
    """Sample ``pid`` for ``seconds`` (collapsed stacks, with native frames so OpenSSL, libuv and
    syscalls show; that needs brief pauses of the process, so never during a measured run)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    return subprocess.Popen(
        [exe, "record", "--format", "raw", "--native", "-r", "100", "-d", f"{seconds:g}",
         "-p", str(pid), "-o", str(raw_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _frame(f: str) -> str:
    # "handle (sidecar/http1.py:123)" -> "handle (sidecar/http1.py)": lines split one function.
    name, _, where = f.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


_IDLE = ("epoll_wait", "epoll_pwait")  # the loop waiting for I/O: not CPU time
# Innermost frame -> where the time goes (checked in order; the first match wins).
_CATEGORIES = (
    ("TLS (OpenSSL, ssl module)", ("libssl", "libcrypto", "_ssl.", "ssl.py", "tlsbio.py")),
    ("HTTP parsing (httptools/llhttp)", ("llhttp", "httptools", "parser.c")),
    ("socket syscalls (read/write/send/recv)", ("(libc.so", "libc.so")),
    ("proxy Python code (sidecar/)", ("sidecar/",)),
    ("event loop (uvloop/libuv, asyncio)", ("loop.c", "uvloop", "libuv", ".c)", "asyncio/")),
)


def category(frame: str) -> str:
    for name, needles in _CATEGORIES:
        if any(n in frame for n in needles):
            return name
    return "other (interpreter, allocator)"


def summarize(raw_path: Path, title: str, top: int = 25) -> str:
    """Where the busy samples go (by category, by innermost function, by any frame on the
    stack), from py-spy's collapsed stacks; samples waiting in epoll count as idle."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    busy = idle = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1].startswith(_IDLE):
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        cats[category(frames[-1])] += n
        for f in set(frames):
            inclusive[f] += n
    if busy == 0:
        return f"{title}: no busy samples ({idle} idle)\n"
    out = [f"{title}: {busy} busy samples, {idle} idle (waiting in epoll); shares of busy",
           "", "  %    where the time goes (innermost frame's kind)"]
    out += [f"{100 * n / busy:6.1f}  {c}" for c, n in cats.most_common()]
    out += ["", "self %  function (innermost frame)"]
    out += [f"{100 * n / busy:6.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "total % function (anywhere on the stack)"]
    # Frames on every busy stack (main, the loop's run) say nothing: leave them out.
    out += [f"{100 * n / busy:6.1f}  {f}" for f, n in inclusive.most_common()
            if n < busy][:top]
    return "\n".join(out) + "\n"
