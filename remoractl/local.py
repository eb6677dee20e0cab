"""remoractl local: the single-host cluster (network namespaces stand in for nodes and pods).

    remoractl local up
    remoractl local apply -f PATH [-n NAMESPACE]
    remoractl local delete -f PATH [-n NAMESPACE]
    remoractl local status [-n NAMESPACE]
    remoractl local logs POD [-c CONTAINER] [-n NAMESPACE] [-f]
    remoractl local exec POD [-c CONTAINER] [-n NAMESPACE] -- CMD...
    remoractl local rollout restart|undo|status|history KIND/NAME [-n NAMESPACE] [--to-revision N]
    remoractl local injector --set KEY=VALUE ... (mesh-config overrides; restarts the injector)
    remoractl local down
    remoractl local revision add|remove|list   (control plane + injector revisions)

State lives in /var/lib/remora/local (REMORA_LOCAL_DIR overrides). Needs root.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from local_cluster import client, config, manifests
from local_cluster.client import ClusterError
from remoractl import local_revision


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("local", help="run the mesh on this host (a local cluster)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="local_command", required=True, metavar="ACTION")

    def action(name: str, help: str, default_ns: str | None = manifests.DEFAULT_NAMESPACE
               ) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help)
        a.add_argument("-n", "--namespace", default=default_ns,
                       help=f"namespace (default: {default_ns or 'all'})")
        return a

    up = action("up", "start the node, the control plane and the injector")
    up.add_argument("--prefix", help=argparse.SUPPRESS)  # tests: a prefix of their own
    for name, verb in (("apply", "create or update"), ("delete", "delete")):
        a = action(name, f"{verb} the objects in files or directories")
        a.add_argument("-f", "--filename", action="append", required=True,
                       help="YAML file or directory (repeatable; - for stdin)")
    action("status", "pods (phase, IP, ready, proxy version) and services", None)
    logs = action("logs", "a container's log")
    logs.add_argument("pod")
    logs.add_argument("-c", "--container")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    ex = action("exec", "run a command in a pod's container (netns, uid, env, mounts)")
    ex.add_argument("pod")
    ex.add_argument("-c", "--container")
    # REMAINDER: argparse's own "--" handling breaks under nested subcommands; _exec splits it.
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD",
                    help="the command and its arguments, after --")
    ro = action("rollout", "restart, undo or watch a deployment/statefulset/daemonset rollout")
    ro.add_argument("rollout_action", choices=("restart", "undo", "status", "history"))
    ro.add_argument("workload", help="KIND/NAME, e.g. deployment/web")
    ro.add_argument("--to-revision", type=int, default=0, help="undo: this revision (default: previous)")
    ro.add_argument("--timeout", type=float, default=300.0, help="status: seconds to wait")
    ro.add_argument("-w", "--watch", action=argparse.BooleanOptionalAction, default=True,
                    help="status: wait until the rollout finishes (default)")
    inj = action("injector", "override the injector's mesh config (e.g. proxyVersion) and restart it")
    inj.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a mesh-config key, e.g. proxyVersion=0.2.0 (YAML value; repeatable)")
    action("down", "remove everything the local cluster made (safe to run twice)")
    local_revision.add_parser(sub)
    return p


def run(args: argparse.Namespace) -> int:
    state = config.StateDir.from_env()
    try:
        return ACTIONS[args.local_command](state, args)
    except (ClusterError, manifests.ManifestError) as e:
        print(f"remoractl local {args.local_command}: {e}", file=sys.stderr)
        return 1


def _up(state: config.StateDir, args: argparse.Namespace) -> int:
    status = client.up(state, args.prefix)
    node = status["node"]
    print(f"local cluster up: node {node['netns']} ({node['bridge']}), state {state.root}")
    print(f"  control plane {node['controlPlane']}, injector webhook {node['webhook']}")
    return 0


def _apply_or_delete(state: config.StateDir, args: argparse.Namespace) -> int:
    objs = manifests.load_paths(args.filename, args.namespace)
    verb = args.local_command
    out = client.checked(state, "POST", f"/{verb}", {"namespace": args.namespace, "objects": objs})
    failed = 0
    for r in out["results"]:
        if "error" in r:
            failed += 1
            print(f"error: {r['error']}", file=sys.stderr)
            continue
        print(f"{r['object']} {r['action']}")
        for w in r.get("warnings") or []:
            print(f"Warning: {w}", file=sys.stderr)
    return 1 if failed else 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _age(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds < 120 else f"{int(seconds // 60)}m"


def format_status(status: dict[str, Any], namespace: str | None) -> str:
    pods = [p for p in status["pods"] if namespace in (None, p["namespace"])]
    rows = [["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "PROXY", "AGE"]]
    for p in pods:
        shown = p["reason"] if p["reason"] and p["phase"] != "Running" else p["phase"]
        if p["reason"] in ("CrashLoopBackOff", "CreateContainerConfigError"):
            shown = p["reason"]
        rows.append([p["namespace"], p["name"], p["ready"], shown, str(p["restarts"]),
                     p["podIP"] or "-", p["proxyVersion"] or "-", _age(p["age"])])
    svcs = [s for s in status["services"] if namespace in (None, s["namespace"])]
    srows = [["NAMESPACE", "SERVICE", "CLUSTER-IP", "PORTS", "ENDPOINTS"]]
    for s in svcs:
        srows.append([s["namespace"], s["name"], s["clusterIP"], ",".join(s["ports"]),
                      ",".join(s["endpoints"]) or "<none>"])
    wls = [w for w in status.get("workloads", []) if namespace in (None, w["namespace"])]
    wrows = [["NAMESPACE", "WORKLOAD", "READY", "UP-TO-DATE", "REVISION", "ROLLOUT"]]
    for w in wls:
        state = "complete" if w["complete"] else ("STALLED" if w["stalled"] else "in progress")
        wrows.append([w["namespace"], f"{w['kind'].lower()}/{w['name']}",
                      f"{w['readyReplicas']}/{w['desired']}", str(w["updatedReplicas"]),
                      str(w["revision"]), state])
    comps = ", ".join(f"{c['name']} {'running' if c['running'] else 'DOWN'}"
                      + (f" ({c['restarts']} restarts)" if c["restarts"] else "")
                      for c in status.get("components", []))
    parts = [f"components: {comps}" if comps else ""]
    parts.append(_table(rows) if pods else "no pods")
    if wls:
        parts.append(_table(wrows))
    parts.append(_table(srows) if svcs else "no services")
    return "\n\n".join(p for p in parts if p)


def _status(state: config.StateDir, args: argparse.Namespace) -> int:
    status = client.checked(state, "GET", "/status")
    print(format_status(status, args.namespace))
    return 0


def _logs(state: config.StateDir, args: argparse.Namespace) -> int:
    path = client.log_path(state, args.namespace, args.pod, args.container)
    with open(path, "rb") as f:
        while True:
            sys.stdout.buffer.write(f.read())
            sys.stdout.flush()
            if not args.follow:
                return 0
            try:
                time.sleep(0.3)
            except KeyboardInterrupt:
                return 0


def split_exec_args(args: argparse.Namespace) -> list[str]:
    """Options given after POD but before ``--`` (``-c``, ``-n``) are applied to ``args``."""
    if "--" not in args.argv:
        return list(args.argv)
    at = args.argv.index("--")
    late = argparse.ArgumentParser(prog="remoractl local exec", add_help=False)
    late.add_argument("-c", "--container", default=args.container)
    late.add_argument("-n", "--namespace", default=args.namespace)
    parsed, extra = late.parse_known_args(args.argv[:at])
    if extra:
        raise ClusterError(f"unexpected arguments before --: {' '.join(extra)}")
    args.container, args.namespace = parsed.container, parsed.namespace
    return args.argv[at + 1:]


def _exec(state: config.StateDir, args: argparse.Namespace) -> int:
    argv = split_exec_args(args)
    if not argv:
        raise ClusterError("no command given; usage: remoractl local exec POD [-c C] -- CMD ...")
    return client.exec_in_pod(state, args.namespace, args.pod, args.container, argv).returncode


def _down(state: config.StateDir, args: argparse.Namespace) -> int:
    removed = client.down(state)
    print("local cluster down: " + ("removed " + str(len(removed)) + " item(s)" if removed
                                    else "nothing to remove"))
    return 0


def _rollout(state: config.StateDir, args: argparse.Namespace) -> int:
    kind, sep, name = args.workload.partition("/")
    if not sep or not name:
        raise ClusterError(f"{args.workload!r}: name the workload as KIND/NAME, e.g. deployment/web")
    action = "status" if args.rollout_action == "history" else args.rollout_action
    body = {"action": action, "kind": kind, "namespace": args.namespace, "name": name,
            "toRevision": args.to_revision}
    out = client.checked(state, "POST", "/rollout", body)
    what = f"{out['kind'].lower()}.apps/{out['name']}"
    if args.rollout_action == "history":
        print(_table([["REVISION", "TEMPLATE-HASH", "CHANGE-CAUSE"]]
                     + [[str(r["revision"]), r["hash"], r["cause"] or "<none>"] for r in out["history"]]))
        return 0
    if action == "restart":
        print(f"{what} restarted")
        return 0
    if action == "undo":
        print(f"{what} rolled back (to revision {out['rolledBackTo']})")
        return 0
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        if out["message"] != last:
            print(out["message"], flush=True)
            last = out["message"]
        if out["complete"]:
            return 0
        if out["stalled"] or not args.watch or time.monotonic() > deadline:
            return 1
        time.sleep(0.5)
        out = client.checked(state, "POST", "/rollout", body)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a mapping; values are YAML (``true``, ``5``, ``0.2.0``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise ClusterError(f"--set {pair!r}: expected KEY=VALUE, e.g. proxyVersion=0.2.0")
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError:
            value = v
        out[k] = v if k.endswith("Version") else value  # versions stay strings (0.10 != 0.1)
    return out


def _injector(state: config.StateDir, args: argparse.Namespace) -> int:
    from injector import meshconfig

    overrides = parse_sets(args.set)
    try:
        meshconfig.from_dict(overrides)  # the injector's own check, before it is restarted
    except meshconfig.MeshConfigError as e:
        raise ClusterError(str(e)) from None
    out = client.checked(state, "POST", "/injector", {"meshConfig": overrides})
    shown = ", ".join(f"{k}={v}" for k, v in sorted(out["meshConfig"].items()))
    print(f"injector restarted with mesh config: {shown}")
    return 0


ACTIONS = {"up": _up, "apply": _apply_or_delete, "delete": _apply_or_delete, "status": _status,
           "logs": _logs, "exec": _exec, "down": _down, "rollout": _rollout, "injector": _injector}
ACTIONS["revision"] = local_revision.run
