"""The first process of every container: mount the pod's volumes, drop to the uid, exec.

Run as ``ip netns exec NS unshare --mount --propagation private python -m
local_cluster.launcher SPEC -- ARGV...`` so every mount made here is private to the container
and disappears with it. SPEC is JSON: ``{"mounts": [[src, dst, read_only], ...], "uid": 1000,
"gid": 1000, "stash": DIR, "workdir": "/"}``. The environment is the container's already.

A mount path that does not exist on the host (``/var/run/secrets/...``) is made on a tmpfs laid
over its deepest existing parent, with that parent's entries bound back in place: nothing is
created or changed on the host's own filesystem.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
PROG = "remora-local"


def _mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def bind(src: str, dst: str, read_only: bool = False) -> None:
    _mount(src, dst, None, MS_BIND | MS_REC)
    if read_only:
        _mount("none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _deepest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def overlay_parent(parent: Path, stash: Path) -> None:
    """Lay a tmpfs over ``parent`` that still shows everything ``parent`` held."""
    if parent == Path("/"):
        raise OSError(f"refusing to lay a tmpfs over / (mount path under {parent})")
    stash.mkdir(parents=True, exist_ok=True)
    _mount(str(parent), str(stash), None, MS_BIND | MS_REC)
    mode = parent.stat().st_mode & 0o7777
    _mount("tmpfs", str(parent), "tmpfs", 0, f"mode={mode:o}")
    for entry in os.scandir(stash):
        dst = parent / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            dst.mkdir()
            bind(entry.path, str(dst))
        else:
            dst.touch()
            bind(entry.path, str(dst))
    _libc.umount2(str(stash).encode(), MNT_DETACH)


def mount_all(mounts: list[list], stash: str) -> None:
    ours: list[Path] = []  # tmpfs overlays made here: paths below them can simply be created
    for i, (src, dst, read_only) in enumerate(sorted(mounts, key=lambda m: m[1].count("/"))):
        target = Path(os.path.realpath(dst))
        is_dir = os.path.isdir(src)
        if not target.exists():
            parent = _deepest_existing(target)
            if not any(parent == o or o in parent.parents for o in ours):
                overlay_parent(parent, Path(stash) / str(i))
                ours.append(parent)
            if is_dir:
                target.mkdir(parents=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        bind(src, str(target), read_only)


def drop_to(uid: int | None, gid: int | None) -> None:
    if uid is None and gid is None:
        return
    os.setgroups([])
    os.setgid(gid if gid is not None else (uid or 0))
    os.setuid(uid if uid is not None else 0)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(f"{PROG}: usage: python -m local_cluster.launcher SPEC -- ARGV...", file=sys.stderr)
        return 2
    spec, run = json.loads(argv[0]), argv[2:]
    try:
        mount_all(spec.get("mounts") or [], spec.get("stash") or "/tmp")
        drop_to(spec.get("uid"), spec.get("gid"))
        os.chdir(spec.get("workdir") or "/")
    except OSError as e:
        print(f"{PROG}: cannot set up the container: {e}", file=sys.stderr)
        return 128
    try:
        os.execvpe(run[0], run, dict(os.environ))
    except FileNotFoundError:
        print(f"{PROG}: command {run[0]!r} not found on this host (the local cluster ignores "
              f"images: the command must exist here; PATH={os.environ.get('PATH', '')})",
              file=sys.stderr)
        return 127
    except PermissionError as e:
        print(f"{PROG}: cannot run {run[0]!r} as uid {os.getuid()}: {e.strerror}",
              file=sys.stderr)
        return 126



def command(netns: str, argv: list[str], *, mounts: list[list] | None = None, uid: int | None = None,
            gid: int | None = None, stash: str | None = None, workdir: str | None = None) -> list[str]:
    """The argv that runs ``argv`` as a container of the pod whose network namespace is ``netns``."""
    spec = {"mounts": mounts or [], "uid": uid, "gid": gid, "stash": stash, "workdir": workdir}
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
            sys.executable, "-m", "local_cluster.launcher", json.dumps(spec), "--", *argv]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
