"""Entry point of `remora-proxy`: ``run`` (default) or ``wait``.

Exit codes: 0 ok (including a drained SIGTERM), 1 runtime failure or wait timeout, 2 bad input.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from control_plane.api import ports

if TYPE_CHECKING:
    import argparse

PROG = "remora-proxy"


def _formatter(prog: str) -> argparse.HelpFormatter:
    import argparse

    # A fixed width: the default asks shutil for the terminal's, and shutil (with bz2, lzma)
    # would stay in every proxy's memory for the sake of --help.
    return argparse.HelpFormatter(prog, width=100)


def _parser() -> argparse.ArgumentParser:
    import argparse

    from .settings import add_run_flags

    p = argparse.ArgumentParser(prog=PROG, description="Remora sidecar proxy",
                                formatter_class=_formatter)
    sub = p.add_subparsers(dest="command")
    add_run_flags(sub.add_parser("run", help="run the proxy (default)", formatter_class=_formatter))
    w = sub.add_parser("wait", help="block until the proxy on this pod is ready",
                       formatter_class=_formatter)
    w.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    w.add_argument("--health-port", type=int, default=ports.HEALTH_PORT)
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list in ([], ["run"]):
        # How a pod starts it (settings from the environment): no parser, so argparse and
        # what it imports (about 0.4 MB of RSS) stay out of the running proxy.
        return run(cast("argparse.Namespace", SimpleNamespace(command="run")))
    if args_list[0] not in ("run", "wait", "-h", "--help"):
        args_list.insert(0, "run")
    args = _parser().parse_args(args_list)
    if args.command == "wait":
        return wait_ready(args.timeout, args.health_port)
    return run(args)


def run(args: argparse.Namespace) -> int:
    from . import memtune

    tuned = memtune.exec_tuned()  # first start: does not return (execv into the second)
    from . import settings as settings_mod

    try:
        s = settings_mod.load(dict(os.environ), args)
    except settings_mod.SettingsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings_mod.python_log_level(s.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from .fdlimit import raise_nofile
    from .runtime import ProxyRuntime

    if not tuned:
        memtune.tune_malloc()
    soft, _ = raise_nofile()
    logging.getLogger("remora.proxy").debug("open-files limit: %d", soft)

    async def _main() -> int:
        try:
            rt = ProxyRuntime(s)  # chooses the HTTP/2 codec: a bad REMORA_H2_CODEC is a ValueError
            return await rt.run()
        except (settings_mod.SettingsError, ValueError, OSError) as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2 if isinstance(e, ValueError) else 1

    return uvloop.run(_main())


def wait_ready(timeout: float, port: int = ports.HEALTH_PORT) -> int:
    """Poll 127.0.0.1:<port>/healthz/ready until 200 (exit 0) or ``timeout`` (exit 1)."""
    import http.client  # only here: the running proxy does not need it (about 1 MB of RSS)

    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            conn.request("GET", "/healthz/ready")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            conn.close()
            if resp.status == 200:
                return 0
            last = f"HTTP {resp.status}: {body}"
        except OSError as e:
            last = str(e)
        if time.monotonic() >= deadline:
            print(f"{PROG} wait: proxy not ready after {timeout:g}s ({last}); "
                  f"check the proxy's log", file=sys.stderr)
            return 1
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
