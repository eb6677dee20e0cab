"""``remoractl analyze``: check Istio resources and Remora's annotations before (``-f``) or
after (the local cluster's live objects) applying them, the way ``istioctl analyze`` does.

    remoractl analyze -f examples/manifests/        # files or directories, "-" for stdin
    remoractl analyze                               # the running local cluster's objects
    remoractl analyze --kubeconfig ~/.kube/config   # a Kubernetes cluster's objects

One line per finding: ``Error [IST0101] (VirtualService shop/reviews) Referenced host not found``.
Exit code 79 (as istioctl's) when a finding is at or above ``--failure-threshold`` (Error by
default), 2 for unreadable input, else 0. Codes: docs/analyze.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from control_plane.sources.files import SUFFIXES, read_manifests
from remoractl import analyzers

FAILURE_EXIT = 79


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("analyze", help="find problems in Istio resources and remora.dev/ settings",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", action="append", default=[], metavar="PATH",
                   help="file or directory (recursive) of manifests; repeatable; - for stdin")
    p.add_argument("--kubeconfig", help="analyze what a Kubernetes cluster holds (read-only lists)")
    p.add_argument("--local-dir", default=None,
                   help="without -f: the local cluster's state directory (default $REMORA_LOCAL_DIR "
                        "or /var/lib/remora/local)")
    p.add_argument("--root-namespace", default="remora-system",
                   help="the mesh's root namespace (mesh-wide policies live there)")
    p.add_argument("--failure-threshold", choices=analyzers.LEVELS, default=analyzers.ERROR)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


class InputError(Exception):
    pass


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return [path]


def load(paths: list[str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for raw in paths:
        if raw == "-":
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
                tmp.write(sys.stdin.read())
                tmp.flush()
                objects += _read(Path(tmp.name), "<stdin>")
            continue
        for f in _files(Path(raw)):
            objects += _read(f, str(f))
    return objects


def _read(path: Path, name: str) -> list[dict[str, Any]]:
    try:
        objs = read_manifests(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{name}: {getattr(exc, 'strerror', None) or exc}") from None
    bad = [i for i, o in enumerate(objs) if not isinstance(o.get("metadata"), dict) or "kind" not in o]
    if bad:
        raise InputError(f"{name}: document {bad[0] + 1} has no kind or metadata")
    return objs


def live_objects(local_dir: str | None) -> list[dict[str, Any]]:
    from local_cluster.config import StateDir

    state = StateDir.from_env(local_dir)
    if not state.objects.is_dir():
        raise InputError(f"no local cluster at {state.root} (start one with `remoractl local up`, "
                         "or give files with -f)")
    return load([str(state.objects)])


# What a live Kubernetes analysis lists: the control plane's kinds, and what the references and
# annotations point at. A kind the server does not serve (no CRD) is skipped.
EXTRA_KINDS = (
    ("Namespace", "", ("v1",), "namespaces"),
    ("ServiceAccount", "", ("v1",), "serviceaccounts"),
    ("Deployment", "apps", ("v1",), "deployments"),
    ("StatefulSet", "apps", ("v1",), "statefulsets"),
    ("DaemonSet", "apps", ("v1",), "daemonsets"),
    ("Gateway", "networking.istio.io", ("v1", "v1beta1"), "gateways"),
)


def kube_objects(kubeconfig: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(objects, kinds that could not be listed) from a Kubernetes API server."""
    from control_plane.sources.kube import KINDS, Kind, KubeSource, api_client

    try:
        source = KubeSource(api_client(kubeconfig))
    except Exception as exc:  # kubeconfig unreadable or invalid: one line, no traceback
        raise InputError(f"--kubeconfig {kubeconfig}: {exc}") from None
    objects: list[dict[str, Any]] = []
    skipped: list[str] = []
    kinds = list(KINDS) + [Kind(*k) for k in EXTRA_KINDS if k[0] not in {x.kind for x in KINDS}]
    for kind in kinds:
        try:
            objects += source.list_kind(kind)
        except Exception as exc:  # not served (no CRD), or not allowed: analyze the rest
            skipped.append(f"{kind.kind} ({str(exc).splitlines()[0][:120]})")
    if len(skipped) == len(kinds):
        raise InputError(f"cannot list anything from the cluster: {skipped[0]}")
    return objects, skipped


def run(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    try:
        if args.filename:
            objects = load(args.filename)
        elif args.kubeconfig:
            objects, skipped = kube_objects(args.kubeconfig)
        else:
            objects = live_objects(args.local_dir)
    except InputError as exc:
        print(f"remoractl analyze: {exc}", file=sys.stderr)
        return 2
    for kind in skipped:
        print(f"remoractl analyze: not listed: {kind}", file=sys.stderr)
    messages = analyzers.analyze(objects, args.root_namespace)
    if args.output == "json":
        print(json.dumps([m.to_dict() for m in messages], indent=2))
    elif messages:
        print("\n".join(str(m) for m in messages))
    else:
        print(f"\u2714 No validation issues found when analyzing {len(objects)} objects.")
    limit = analyzers.LEVELS.index(args.failure_threshold)
    return FAILURE_EXIT if any(analyzers.LEVELS.index(m.level) <= limit for m in messages) else 0
