"""``remoractl check``: is this host ready for Remora, is Remora installed and healthy, are the
proxies current. One line per check with ✔ or ✖ (and a hint under each ✖); exit code 1 when
any check fails; ``-o json`` for scripts.

    remoractl check --pre-install       # kernel, iptables backends, Python for uid 1337, root
    remoractl check                     # control plane, injector, webhook certificate, CA root,
                                        # root certificate in every injected namespace
    remoractl check --proxy             # the above, and every proxy current, SYNCED, certified

The control plane is found as by every live command (``remoractl/target.py``: the local
cluster, ``--local-dir`` naming its state directory, else the kubeconfig's context, or
``--control-plane-url``), the injector next to it (or ``--injector-url``). On the local cluster
its webhook address, caBundle and root certificate are used unless given; on Kubernetes every
namespace is checked for the root certificate. When the control plane cannot be reached the
checks are still printed, and one line on stderr says why (exit code 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from remoractl import checks, meshapi
from remoractl.target import Target, TargetError, add_target_args, resolve

WEBHOOK_NAME = "remora-injector.remora-system.svc"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check", help="pre-install, install and proxy health checks",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--pre-install", action="store_true", help="only the host checks")
    mode.add_argument("--proxy", action="store_true", help="also check every connected proxy")
    add_target_args(p, injector=True)
    p.add_argument("--webhook-address", help="HOST:PORT of the injector webhook (default: the local cluster's)")
    p.add_argument("--webhook-ca", type=Path, help="the webhook's caBundle as a PEM file")
    p.add_argument("--webhook-name", default=WEBHOOK_NAME, help=f"name the API server verifies (default {WEBHOOK_NAME})")
    p.add_argument("--root-cert", type=Path, help="the mesh root certificate (PEM)")
    p.add_argument("--local-dir", help="the local cluster's state directory (default $REMORA_LOCAL_DIR)")
    p.add_argument("--python", default=sys.executable, help="the Python the proxy will run (default: this one)")
    p.add_argument("--cert-margin", type=float, default=3600.0,
                   help="seconds a proxy certificate must still be valid (default 3600)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def _local_defaults(args: argparse.Namespace, state: Any) -> None:
    """Fill the webhook and root inputs from the local cluster in ``state``."""
    from local_cluster import client

    try:
        status = client.checked(state, "GET", "/status")
    except client.ClusterError:
        status = {}
    url = (status.get("node") or {}).get("webhook", "")
    if not args.webhook_address and url.startswith("https://"):
        args.webhook_address = url.removeprefix("https://").split("/")[0]
    args.webhook_ca = args.webhook_ca or state.injector / "ca.crt"
    args.root_cert = args.root_cert or state.root_cert


def _target(args: argparse.Namespace) -> Target | None:
    """The control plane, or None with why in ``args.unreachable``."""
    if args.local_dir:
        os.environ["REMORA_LOCAL_DIR"] = str(args.local_dir)  # where the target looks
    try:
        return resolve(args)
    except TargetError as exc:
        args.unreachable = exc
        return None


def plan(args: argparse.Namespace) -> list:
    pre = [checks.permissions, checks.network_namespaces, checks.iptables_backends,
           checks.kernel_features, partial(checks.python_for_proxy, args.python)]
    if args.pre_install:
        return pre
    target = _target(args)
    if target is not None and target.state is not None:
        _local_defaults(args, target.state)

    def control_plane() -> checks.Result:
        if target is None:
            return checks.Result(checks.INSTALL, "control plane ready", False, str(args.unreachable))
        result = checks.control_plane_ready(target)
        if not result.ok and result.detail.startswith("cannot "):
            args.unreachable = TargetError(result.detail)
        return result

    install: list[Callable[[], Any]] = [
        control_plane, lambda: checks.injector_ready(meshapi.injector_version(args, target))]
    if args.webhook_address and args.webhook_ca:
        install.append(partial(checks.webhook_certificate, args.webhook_address, args.webhook_ca,
                               args.webhook_name))
    else:
        install.append(lambda: checks.Result(checks.INSTALL, "webhook certificate", False,
                                             "no webhook address and caBundle to check",
                                             "give --webhook-address and --webhook-ca"))
    root = args.root_cert.read_bytes() if args.root_cert and args.root_cert.exists() else None
    if root is not None:
        install.append(partial(checks.root_expiry, root))
    else:
        install.append(lambda: checks.Result(checks.INSTALL, "CA root expiry", False,
                                             f"no root certificate at {args.root_cert or '(none given)'}",
                                             "give --root-cert (root-cert.pem of the CA Secret)"))
    if target is not None and target.api is not None:  # Kubernetes: every injected namespace
        def namespaces() -> checks.Result:
            ns, cms = checks.kube_namespaces_and_roots(target.api)
            return checks.namespaces_have_root(ns, cms, root)
        install.append(namespaces)
    if not args.proxy:
        return install
    return install + [lambda: _proxy_checks(args, target)]


def _proxy_checks(args: argparse.Namespace, target: Target | None) -> list[checks.Result]:
    try:
        if target is None:
            raise args.unreachable
        code, body = target.get("/debug/proxies")
    except TargetError as exc:
        return [checks.Result(checks.PROXY, "proxies", False, str(exc))]
    if code != 200 or not isinstance(body, dict):
        return [checks.Result(checks.PROXY, "proxies", False, f"{target.where} answered HTTP {code}")]
    proxies = body.get("proxies") or []
    injector = meshapi.injector_version(args, target).body
    return [checks.data_plane_up_to_date(proxies, injector), checks.proxies_synced(proxies),
            checks.proxy_certificates(proxies, dt.timedelta(seconds=args.cert_margin))]


def run(args: argparse.Namespace) -> int:
    args.unreachable = None
    results: list[checks.Result] = []
    for r in checks.run_all(plan(args)):
        results.extend(r if isinstance(r, list) else [r])
    if args.output == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        group = None
        for r in results:
            if r.group != group:
                group = r.group
                print(("" if r is results[0] else "\n") + f"{group}\n" + "-" * len(group))
            print(r)
        failed = sum(not r.ok for r in results)
        print("\nStatus check results are \u2714" if not failed else f"\n{failed} check(s) failed \u2716")
    if args.unreachable is not None:  # the checks are shown; the one line says what to do
        sys.stdout.flush()
        raise args.unreachable
    return 1 if any(not r.ok for r in results) else 0
