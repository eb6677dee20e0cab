"""``remoractl version``: the client's, the control plane's, the injector's and the data plane's
versions, the data plane counted per version, as ``istioctl version`` shows them.

    client version: 0.1.0
    control plane version: 0.1.0 (revision default), 0.2.0 (revision canary)
    injector version: 0.1.0 (revision default; injects proxy 0.1.0, template 0a96d035e120be5a)
    data plane version: 0.1.0 (4 proxies), 0.0.9 (1 proxy)

``--client`` prints the client's only (no mesh needed). The control plane is found as by every
live command (``remoractl/target.py``: the local cluster, the kubeconfig, ``--control-plane-url``)
and the injector next to it (or ``--injector-url``). Give ``--control-plane-url`` once per
revision to see them all; the data plane is counted over them. Exit code 1 when a control plane
cannot be reached: with one, a one-line error; with several, the others are still shown. An
injector that cannot be reached is shown as unknown.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from control_plane.api.version import version
from remoractl import meshapi
from remoractl.target import Target, TargetError, add_target_args, resolve


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("version", help="client, control plane, injector and proxy versions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client", action="store_true", help="only the client's version")
    p.add_argument("--short", action="store_true", help="with --client: the bare version number")
    add_target_args(p, repeat=True, injector=True)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def collect(args: argparse.Namespace) -> dict[str, Any]:
    urls: list[str | None] = list(args.control_plane_url or [None])
    planes: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    first: Target | None = None
    for url in urls:
        try:
            target = resolve(argparse.Namespace(**{**vars(args), "control_plane_url": url}))
            cp = meshapi.component_version(target, "control-plane", strict=len(urls) == 1)
        except TargetError as exc:
            if len(urls) == 1:
                raise
            planes.append({"error": str(exc)})
            continue
        first = first or target
        planes.append(cp.body if cp.body is not None else {"error": cp.error or "?"})
        counts.update((cp.body or {}).get("proxies", {}))
    inj = meshapi.injector_version(args, first)
    return {
        "client": {"version": version()},
        "controlPlanes": planes,
        "injector": inj.body if inj.body is not None else {"error": inj.error},
        "dataPlane": dict(sorted(counts.items())),  # summed over the control planes asked
    }


def _plural(n: int) -> str:
    return f"{n} prox{'y' if n == 1 else 'ies'}"


def render(info: dict[str, Any]) -> str:
    lines = [f"client version: {info['client']['version']}"]
    planes, inj = info.get("controlPlanes"), info.get("injector")
    if planes is None:
        return lines[0]
    lines.append("control plane version: " + ", ".join(
        f"unknown ({cp['error']})" if "error" in cp else f"{cp['version']} (revision {cp['revision']})"
        for cp in planes))
    if inj is not None and "error" in inj:
        lines.append(f"injector version: unknown ({inj['error']}; pass --injector-url)")
    elif inj is not None:
        lines.append(f"injector version: {inj['version']} (revision {inj['revision']}; injects proxy "
                     f"{inj['proxyVersion']}, template {inj['templateHash']})")
    counts = info.get("dataPlane") or {}
    by_count = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    plane = ", ".join(f"{v} ({_plural(n)})" for v, n in by_count) or "no proxies connected"
    lines.append(f"data plane version: {plane}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.client and args.short:
        print(version())
        return 0
    if args.client:
        info: dict[str, Any] = {"client": {"version": version()}}
    else:
        info = collect(args)
    print(json.dumps(info, indent=2) if args.output == "json" else render(info))
    return 1 if any("error" in cp for cp in info.get("controlPlanes") or []) else 0
