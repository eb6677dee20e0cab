"""What ``remoractl`` reads from the running mesh: the control plane's and the injector's
monitoring ports (``/version``, ``/debug/proxies``), and the verdict on each proxy's version.

Where the injector cannot be reached, nothing is marked OUTDATED (we cannot know) and the
caller says so: a guess would send an operator restarting the wrong workloads.
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
                        f"a port-forward (default ${INJECTOR_URL_ENV}); it tells what is current")


@dataclass
class Answer:
    body: Any = None
    error: str | None = None  # why there is no body: unreachable, HTTP status, not JSON


def get_json(base: str, path: str, timeout: float = 5.0) -> Answer:
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return Answer(json.load(r))
    except urllib.error.HTTPError as exc:
        return Answer(error=f"{url} answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Answer(error=f"cannot reach {url}: {getattr(exc, 'reason', exc)}")
    except ValueError:
        return Answer(error=f"{url} did not answer JSON")


def component_version(base: str | None, component: str) -> Answer:
    """``/version`` of a control plane or injector; checks it is the component asked for."""
    if not base:
        return Answer(error=f"no {component} URL given")
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
