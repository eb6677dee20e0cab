"""What ``remoractl`` reads from the running mesh: the control plane's and the injector's
monitoring ports (``/version``, ``/debug/proxies``), and the verdict on each proxy's version.

Where the injector cannot be reached, nothing is marked OUTDATED (we cannot know) and the
caller says so: a guess would send an operator restarting the wrong workloads.

A URL ``local`` or ``local:REV`` means the running local cluster's (``$REMORA_LOCAL_DIR``)
default revision or revision REV: its control plane is reached through the local cluster's
daemon (it listens in the node's network namespace), its injector at the address the daemon
reports.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTROL_PLANE_URL = "http://127.0.0.1:15014"
INJECTOR_URL_ENV = "REMORA_INJECTOR_URL"


def default_injector_url() -> str | None:
    return os.environ.get(INJECTOR_URL_ENV) or None


def add_injector_flag(p: Any) -> None:
    p.add_argument("--injector-url", default=default_injector_url(),
                   help="remora-injector monitoring address, e.g. http://127.0.0.1:15015 after "
                        f"a port-forward, or local[:REV] (default ${INJECTOR_URL_ENV}); it tells "
                        "what is current")


@dataclass
class Answer:
    body: Any = None
    error: str | None = None  # why there is no body: unreachable, HTTP status, not JSON
    status: int = 0  # the HTTP status, when there was an answer


LOCAL = "local"


def local_revision(base: str | None) -> str | None:
    """The revision a ``local[:REV]`` URL names; None for an ordinary URL."""
    if base is None or (base != LOCAL and not base.startswith(LOCAL + ":")):
        return None
    return base.partition(":")[2] or "default"


def _local_call(path: str) -> Answer:
    from local_cluster import client, config
    from local_cluster.client import ClusterError

    try:
        code, body = client.call(config.StateDir.from_env(), "GET", path, timeout=15)
    except ClusterError as exc:
        return Answer(error=str(exc))
    if code != 200:
        return Answer(error=(body or {}).get("error") if isinstance(body, dict) else f"HTTP {code}",
                      status=code)
    return Answer(body, status=code)


def _local_injector_url(rev: str) -> Answer:
    status = _local_call("/status")
    if status.body is None:
        return status
    if rev == "default":
        return Answer(status.body["node"].get("injectorMonitoring"))
    for r in status.body.get("revisions") or []:
        if r["name"] == rev:
            return Answer(r["injectorMonitoring"])
    return Answer(error=f"no revision {rev!r} in the local cluster")


def get_json(base: str, path: str, timeout: float = 5.0) -> Answer:
    rev = local_revision(base)
    if rev is not None:  # a control plane of the local cluster
        return _local_call(f"/monitoring/{rev}{path}")
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return Answer(json.load(r))
    except urllib.error.HTTPError as exc:
        return Answer(error=f"{url} answered HTTP {exc.code}", status=exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return Answer(error=f"cannot reach {url}: {getattr(exc, 'reason', exc)}")
    except ValueError:
        return Answer(error=f"{url} did not answer JSON")


def component_version(base: str | None, component: str) -> Answer:
    """``/version`` of a control plane or injector; checks it is the component asked for."""
    if not base:
        return Answer(error=f"no {component} URL given")
    rev = local_revision(base)
    if rev is not None and component == "injector":
        resolved = _local_injector_url(rev)
        if resolved.body is None:
            return resolved
        base = resolved.body
    ans = get_json(base, "/version")
    if ans.body is not None and (not isinstance(ans.body, dict) or ans.body.get("component") != component):
        return Answer(error=f"{base} is not a remora {component} (its /version says "
                            f"{(ans.body or {}).get('component')!r})")
    return ans


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
