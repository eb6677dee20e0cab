"""Entry point of `remora-init`: plan, then apply, clean up, verify or just print.

Exit codes: 0 ok, 1 runtime or environment failure, 2 bad input. Every failure is one line on
stderr: ``remora-init: <what is wrong>; <how to fix it>``.

IPv6 runs in a child process of this program (internal flag ``--family 6``) because one
process can load the REDIRECT target for one address family only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence

from . import apply, loopback, verify
from .config import Action, ConfigError, Invocation, parse_invocation
from .errors import InitError
from .plan import Family, Plan, build_plan

PROG = "remora-init"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        inv = parse_invocation(args, os.environ)
    except ConfigError as e:
        return _fail(e, 2)
    try:
        run(inv, args)
    except InitError as e:
        return _fail(e, 1)
    except Exception as e:  # a bug, or an environment nobody foresaw: still one line
        return _fail(InitError(f"unexpected {type(e).__name__}: {e}", "report this as a bug"), 1)
    return 0


def _fail(error: Exception, code: int) -> int:
    print(f"{PROG}: {error}", file=sys.stderr)
    return code


def families(inv: Invocation) -> tuple[Family, ...]:
    if inv.family is not None:
        return (inv.family,)
    # --cleanup removes what any earlier run wrote, whatever --ipv6 says now.
    return (4, 6) if inv.config.ipv6 or inv.action is Action.CLEANUP else (4,)


def run(inv: Invocation, args: list[str]) -> None:
    fams = families(inv)
    if inv.action is Action.DRY_RUN:
        for fam in fams:
            print(f"# {PROG} plan for IPv{fam}; in place: {verify.SAVE[fam]} -t nat")
            print(build_plan(inv.config, fam).render(), end="")
        return
    apply.check_privileges()
    if inv.action is Action.VERIFY:
        for fam in fams:
            diff = verify.first_difference(build_plan(inv.config, fam), verify.saved_nat(fam))
            if diff:
                raise InitError(f"rules differ from the plan: {diff}",
                                f"run {PROG} with the same settings to repair them")
        print(f"{PROG}: rules in place match the plan (IPv{', IPv'.join(map(str, fams))})")
        return
    cleanup = inv.action is Action.CLEANUP
    if inv.family is not None:
        _write_family(inv, inv.family, cleanup)
    else:
        _write(inv, args, fams, cleanup)


def _write(inv: Invocation, args: list[str], fams: tuple[Family, ...], cleanup: bool) -> None:
    """IPv4 here and IPv6 in a child, side by side; if either fails, take the other back."""
    child = _start_child(args) if 6 in fams else None
    errors: dict[Family, InitError] = {}
    try:
        _write_family(inv, 4, cleanup)
    except InitError as e:
        errors[4] = e
    finally:
        if child is not None:
            try:
                _finish_child(child)
            except InitError as e:
                errors[6] = e
    if not errors:
        return
    if not cleanup:  # leave no half-written state: remove what this run wrote
        with contextlib.suppress(InitError):  # the first error is the one to report
            if 4 not in errors:
                _write_family(inv, 4, cleanup=True)
            if child is not None and 6 not in errors:
                _finish_child(_start_child([*args, "--cleanup"]))
    raise next(iter(errors.values()))


def _write_family(inv: Invocation, family: Family, cleanup: bool) -> None:
    iptc = apply.load_iptc()
    if cleanup and not apply.nat_available(iptc, family):
        return  # no nat table, so nothing of ours to remove
    plan = Plan.empty(family) if cleanup else build_plan(inv.config, family)
    if family == 6 and not cleanup:
        loopback.ensure_passthrough_address()
    apply.apply_plan(iptc, plan)


def _start_child(args: list[str]) -> subprocess.Popen[str]:
    """This program for IPv6 only, in a fresh process (REDIRECT is one family per process)."""
    return subprocess.Popen([sys.executable, "-m", "init_container", *args, "--family", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_child(proc: subprocess.Popen[str]) -> None:
    """Wait for the child; re-raise its one-line error as ours."""
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        line = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        what, _, fix = line.removeprefix(f"{PROG}: ").rpartition("; ")
        if not line.startswith(f"{PROG}: ") or not what:
            raise InitError(f"the IPv6 step failed: {line}", "report this as a bug")
        raise InitError(what, fix)

if __name__ == "__main__":
    sys.exit(main())
