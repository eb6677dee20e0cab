"""``remoractl check``: is this host ready for Remora, is Remora installed and healthy, are the
proxies current. One line per check with ✔ or ✖ (and a hint under each ✖); exit code 1 when
any check fails; ``-o json`` for scripts.

    remoractl check --pre-install       # kernel, iptables backends, Python for uid 1337, root
    remoractl check                     # control plane, injector, webhook certificate, CA root,
                                        # root certificate in every injected namespace
    remoractl check --proxy             # the above, and every proxy current, SYNCED, certified

Where an input is not given, the running local cluster's is used when there is one
(``--local-dir``; its default revision, or ``--control-plane-url local:REV --injector-url
local:REV``); the namespace check reads the Kubernetes API (``--kubeconfig``) and is left out
without one.
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

WEBHOOK_NAME = "remora-injector.remora-system.svc"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check", help="pre-install, install and proxy health checks",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--pre-install", action="store_true", help="only the host checks")
    mode.add_argument("--proxy", action="store_true", help="also check every connected proxy")
    p.add_argument("--control-plane-url", default=meshapi.DEFAULT_CONTROL_PLANE_URL)
    meshapi.add_injector_flag(p)
    p.add_argument("--webhook-address", help="HOST:PORT of the injector webhook (default: the local cluster's)")
    p.add_argument("--webhook-ca", type=Path, help="the webhook's caBundle as a PEM file")
    p.add_argument("--webhook-name", default=WEBHOOK_NAME, help=f"name the API server verifies (default {WEBHOOK_NAME})")
    p.add_argument("--root-cert", type=Path, help="the mesh root certificate (PEM)")
    p.add_argument("--kubeconfig", help="read namespaces and their root certificate from this cluster")
    p.add_argument("--local-dir", help="the local cluster's state directory (default $REMORA_LOCAL_DIR)")
    p.add_argument("--python", default=sys.executable, help="the Python the proxy will run (default: this one)")
    p.add_argument("--cert-margin", type=float, default=3600.0,
                   help="seconds a proxy certificate must still be valid (default 3600)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def _local_defaults(args: argparse.Namespace) -> None:
    """Fill the webhook and root inputs from a running local cluster."""
    from local_cluster import client
    from local_cluster.config import StateDir

    state = StateDir.from_env(args.local_dir)
    if not client.running(state):
        return
    os.environ["REMORA_LOCAL_DIR"] = str(state.root)  # where meshapi's local: URLs look
    # The local cluster's own control plane and injector, unless others were named.
    if args.control_plane_url == meshapi.DEFAULT_CONTROL_PLANE_URL:
        args.control_plane_url = meshapi.LOCAL
    args.injector_url = args.injector_url or meshapi.LOCAL
    _, status = client.call(state, "GET", "/status", timeout=10)
    url = ((status or {}).get("node") or {}).get("webhook", "")
    if not args.webhook_address and url.startswith("https://"):
        args.webhook_address = url.removeprefix("https://").split("/")[0]
    args.webhook_ca = args.webhook_ca or state.injector / "ca.crt"
    args.root_cert = args.root_cert or state.root_cert


def plan(args: argparse.Namespace) -> list:
    pre = [checks.permissions, checks.network_namespaces, checks.iptables_backends,
           checks.kernel_features, partial(checks.python_for_proxy, args.python)]
    if args.pre_install:
        return pre
    _local_defaults(args)
    install: list[Callable[[], checks.Result]] = [
               partial(checks.control_plane_ready, args.control_plane_url),
               partial(checks.injector_ready, args.injector_url)]
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
    if args.kubeconfig:
        def namespaces() -> checks.Result:
            ns, cms = checks.kube_namespaces_and_roots(args.kubeconfig)
            return checks.namespaces_have_root(ns, cms, root)
        install.append(namespaces)
    if not args.proxy:
        return install
    return install + [lambda: _proxy_checks(args)]


def _proxy_checks(args: argparse.Namespace) -> list[checks.Result]:
    ans = meshapi.get_json(args.control_plane_url, "/debug/proxies")
    if ans.body is None:
        return [checks.Result(checks.PROXY, "proxies", False, ans.error or "?",
                              "the control plane's monitoring port must be reachable")]
    proxies = ans.body.get("proxies") or []
    injector = meshapi.component_version(args.injector_url, "injector").body
    return [checks.data_plane_up_to_date(proxies, injector), checks.proxies_synced(proxies),
            checks.proxy_certificates(proxies, dt.timedelta(seconds=args.cert_margin))]


def run(args: argparse.Namespace) -> int:
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
    return 1 if any(not r.ok for r in results) else 0
