"""``remoractl inject -f FILE``: manual sidecar injection, the webhook's template offline.

Multi-document YAML in, YAML out on stdout. Pods and workloads (Deployment, StatefulSet,
DaemonSet, ReplicaSet, Job, CronJob, and the items of a List) get the sidecar; every other
document is copied through byte for byte.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import yaml

from injector import workloads
from injector.meshconfig import MeshConfig, MeshConfigError, load

_DOC_START = re.compile(r"^---(?=\s|$)", re.MULTILINE)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inject", help="inject the sidecar into manifests (like the webhook)",
                              description=__doc__)
    p.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    p.add_argument("--mesh-config", help="mesh defaults (YAML file or ConfigMap)")
    return p


def split_documents(text: str) -> list[str]:
    """Split a YAML stream at its ``---`` lines, keeping each document's text as written."""
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _inject(obj: Any, mesh: MeshConfig, where: str, notes: list[str]) -> tuple[Any, bool]:
    if isinstance(obj, dict) and obj.get("kind") == "List":
        changed = False
        items = []
        for i, item in enumerate(obj.get("items") or []):
            new, c = _inject(item, mesh, f"{where} item {i}", notes)
            items.append(new)
            changed |= c
        return ({**obj, "items": items} if changed else obj), changed
    try:
        new, reason = workloads.inject_object(obj, mesh)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if reason not in (None, "not-a-workload"):
        notes.append(f"{where}: not injected ({reason})")
    return new, reason is None


def inject_text(text: str, mesh: MeshConfig, source: str = "input") -> tuple[str, list[str]]:
    """Inject every workload in a YAML stream; returns (YAML, notes about skipped objects)."""
    out: list[str] = []
    notes: list[str] = []
    for index, chunk in enumerate(split_documents(text)):
        try:
            obj = yaml.safe_load(_DOC_START.sub("", chunk, count=1))
        except yaml.YAMLError as e:
            raise ValueError(f"{source} document {index + 1}: not valid YAML: {e}") from None
        new, changed = _inject(obj, mesh, f"{source} document {index + 1}", notes)
        if not changed:
            out.append(chunk)
            continue
        body = yaml.safe_dump(new, sort_keys=False, default_flow_style=False)
        out.append(("---\n" if chunk.startswith("---") else "") + body)
    return "".join(s if s.endswith("\n") or not s else s + "\n" for s in out), notes


def run(args: argparse.Namespace) -> int:
    try:
        mesh = load(args.mesh_config)
        if args.filename == "-":
            text, source = sys.stdin.read(), "stdin"
        else:
            with open(args.filename) as f:
                text, source = f.read(), args.filename
        result, notes = inject_text(text, mesh, source)
    except OSError as e:
        print(f"remoractl inject: cannot read {args.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except (ValueError, MeshConfigError) as e:
        print(f"remoractl inject: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"remoractl inject: {note}", file=sys.stderr)
    sys.stdout.write(result)
    return 0
