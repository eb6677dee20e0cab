"""What ``remoractl`` reads from the running mesh's monitoring ports (found by
``remoractl/target.py``): each component's ``/version``, and the verdict on each proxy's version.

Where the injector cannot be reached, nothing is marked OUTDATED (we cannot know) and the
caller says so: a guess would send an operator restarting the wrong workloads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from remoractl.target import Target, TargetError, injector_of


@dataclass
class Answer:
    body: Any = None
    error: str | None = None  # why there is no body: unreachable, HTTP status, not remora's


def component_version(target: Target, component: str, strict: bool = False) -> Answer:
    """``/version`` of a control plane or injector; checks it is the component asked for.
    ``strict``: a target that does not answer raises its TargetError."""
    try:
        code, body = target.get("/version")
    except TargetError as exc:
        if strict:
            raise
        return Answer(error=str(exc))
    if code != 200:
        return Answer(error=f"{target.where} answered HTTP {code} to /version")
    if not isinstance(body, dict) or body.get("component") != component:
        found = body.get("component") if isinstance(body, dict) else None
        return Answer(error=f"{target.where} is not a remora {component} (its /version says {found!r})")
    return Answer(body)


def injector_version(args: argparse.Namespace, target: Target | None) -> Answer:
    """The injector's ``/version``: ``--injector-url``, else the one next to ``target``."""
    try:
        injector = injector_of(args, target)
    except TargetError as exc:
        return Answer(error=str(exc))
    return component_version(injector, "injector")


def outdated(proxy: dict[str, Any], injector: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Is this proxy behind what the injector injects now? (verdict, why); None: unknown."""
    if not injector:
        return None, "injector not reachable"
    want_v, want_h = injector.get("proxyVersion", ""), injector.get("templateHash", "")
    have_v, have_h = proxy.get("proxy_version", ""), proxy.get("template_hash", "")
    if have_v != want_v:
        return True, f"proxy {have_v}, injector injects {want_v}"
    if have_h and have_h != want_h:
        return True, f"template {have_h}, injector's is {want_h}"
    return False, "" if have_h else "proxy did not report its template (older release)"
