"""``remoractl local revision add NAME [--version X.Y.Z] | remove NAME | list``: more control
plane + injector revisions on the local cluster (local_cluster/revisions.py, docs/upgrade.md).

Move a namespace to revision NAME by applying it with the label ``remora.dev/rev: NAME``; pods
created afterwards are injected by NAME's injector and connect to NAME's control plane.
"""

from __future__ import annotations

import argparse
from typing import Any

from local_cluster import client, config
from local_cluster.client import ClusterError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("revision", help="add, remove or list control plane + injector revisions",
                       description=__doc__)
    acts = p.add_subparsers(dest="revision_command", required=True, metavar="ACTION")
    add = acts.add_parser("add", help="start revision NAME's control plane and injector")
    add.add_argument("name")
    add.add_argument("--version", help="run it as release X.Y.Z (simulates a new image; its injector "
                                       "injects proxies that report X.Y.Z)")
    rm = acts.add_parser("remove", help="stop revision NAME")
    rm.add_argument("name")
    acts.add_parser("list", help="the running revisions and their addresses")


def _print(rev: dict[str, Any]) -> None:
    print(f"revision {rev['name']}" + (f" (version {rev['version']})" if rev.get("version") else "")
          + f": control plane {rev['controlPlane']} (monitoring {rev['controlPlaneMonitoring']}), "
          f"injector webhook {rev['webhook']} (monitoring {rev['injectorMonitoring']})")


def run(state: config.StateDir, args: argparse.Namespace) -> int:
    if args.revision_command == "add":
        code, body = client.call(state, "POST", "/revisions", {"name": args.name, "version": args.version})
    elif args.revision_command == "remove":
        code, body = client.call(state, "DELETE", f"/revisions/{args.name}")
    else:
        code, body = client.call(state, "GET", "/status")
        revs = body.get("revisions") or [] if code == 200 else []
        for rev in revs:
            _print(rev)
        if not revs:
            print("no revisions besides the default one")
        return 0 if code == 200 else 1
    if code != 200:
        raise ClusterError(body.get("error") if isinstance(body, dict) else str(body))
    if args.revision_command == "add":
        _print(body)
    else:
        print(f"revision {args.name} stopped")
    return 0
