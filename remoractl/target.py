"""Where remoractl's live commands find the control plane, as kubectl finds its cluster.

In this order, the first that applies wins:

1. ``--control-plane-url URL``: that monitoring address, over plain HTTP from here.
2. ``--context`` or ``--kubeconfig``: that Kubernetes cluster (step 4).
3. The local cluster, when its daemon answers on its state directory (``REMORA_LOCAL_DIR``,
   default /var/lib/remora/local): its control plane listens inside the node's network
   namespace, so the connection is made from there (this needs root, as the local cluster does).
4. The kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``; ``--context``): a
   port-forward through the API server to a running remora-control pod in
   ``--control-plane-namespace`` (default remora-system), as istioctl does.

``--control-plane-url local`` or ``local:REV`` names a control plane of the running local cluster
(its default revision or revision REV), reached through the local cluster's daemon.

The injector's monitoring port is found through the same target (``Target.injector()``): the
local cluster's daemon names it; on Kubernetes it is a port-forward to a running remora-injector
pod in the same namespace; ``--injector-url`` (``$REMORA_INJECTOR_URL``) overrides it.

Every failure is a ``TargetError``: one line saying what was wrong and what to do. Commands are
wrapped by ``one_line`` (``remoractl/cli.py`` does it for all), so none prints a traceback for it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.api.ports import MONITORING_PORT

NAMESPACE = "remora-system"
SELECTOR = "app.kubernetes.io/name=remora,app.kubernetes.io/component={component}"
TIMEOUT = 5.0
URL_FLAG = "--control-plane-url"
INJECTOR_FLAG = "--injector-url"
INJECTOR_URL_ENV = "REMORA_INJECTOR_URL"
LOCAL = "local"  # --control-plane-url local[:REV]


class TargetError(Exception):
    """Why the control plane could not be reached or understood; one line for the user."""


def add_target_args(p: argparse.ArgumentParser, repeat: bool = False, injector: bool = False) -> None:
    """The flags of every live command (tests find live commands by ``--control-plane-url``);
    ``repeat``: the URL may be given once per revision; ``injector``: also ``--injector-url``."""
    g = p.add_argument_group("where the control plane is (default: the local cluster if it is up, "
                             "else the kubeconfig's current context)")
    g.add_argument(URL_FLAG, metavar="URL", action="append" if repeat else "store",
                   help="remora-control's monitoring address, e.g. "
                   f"http://127.0.0.1:{MONITORING_PORT}, or local[:REV] for a revision of the local "
                   "cluster" + ("; repeat it for every revision" if repeat else ""))
    if injector:
        g.add_argument(INJECTOR_FLAG, metavar="URL", default=os.environ.get(INJECTOR_URL_ENV) or None,
                       help="remora-injector's monitoring address, or local[:REV] (default "
                       f"${INJECTOR_URL_ENV}, else the injector next to the control plane); it "
                       "tells what is current")
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    g.add_argument("--context", help="kubeconfig context (default: the current one)")
    g.add_argument("--control-plane-namespace", metavar="NS", default=NAMESPACE,
                   help=f"namespace of remora-control on Kubernetes (default {NAMESPACE})")


@dataclass
class Target:
    """A way to open a TCP connection to the control plane's monitoring port."""

    where: str  # for messages: "the control plane at ...", "the local cluster's control plane ..."
    host: str
    port: int
    connect: Any = None  # () -> socket; None: an ordinary connection to host:port
    hint: str = ""  # what to try when it does not answer
    revision: str | None = None  # local[:REV]: a local-cluster revision, through the daemon
    state: Any = None  # the local cluster's StateDir, when the target is (in) the local cluster
    api: Any = None  # the kubernetes ApiClient, when the target is a Kubernetes cluster
    find_injector: Callable[[], Target] | None = None

    def injector(self) -> Target:
        """The injector's monitoring port next to this control plane."""
        if self.find_injector is None:
            raise TargetError(f"where the injector of {self.where} listens is not known; give "
                              f"{INJECTOR_FLAG} URL")
        return self.find_injector()

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        """(HTTP status, JSON body) of GET ``path``; TargetError when there is no usable answer."""
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        if self.revision is not None:
            return self._relayed(url)
        conn = _Connection(self.host, self.port, self.connect)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except TargetError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise TargetError(f"cannot reach {self.where}: {_reason(exc)}{self.hint}") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            raise TargetError(f"{self.where} answered HTTP {resp.status} with something that is not "
                              f"remora-control's JSON: {body[:80]!r}{self.hint}") from None


    def _relayed(self, url: str) -> tuple[int, Any]:
        from local_cluster import client

        try:
            code, body = client.call(self.state, "GET", f"/monitoring/{self.revision}{url}", timeout=15)
        except client.ClusterError as exc:
            raise TargetError(f"cannot reach {self.where}: {exc}{self.hint}") from None
        if code == 502 or body is None:
            error = body.get("error") if isinstance(body, dict) else f"HTTP {code}"
            raise TargetError(f"cannot reach {self.where}: {error}{self.hint}")
        return code, body


def one_line(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` with every TargetError printed as one line on stderr and exit code 1."""
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except TargetError as exc:
            print(f"remoractl {args.command}: {exc}", file=sys.stderr)
            return 1
    return guarded


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, connect: Any) -> None:
        super().__init__(host, port, timeout=TIMEOUT)
        self._connect = connect

    def connect(self) -> None:
        if self._connect is None:
            super().connect()
        else:
            self.sock = self._connect()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {TIMEOUT:.0f} s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# -- the four ways ------------------------------------------------------------------------------

def local_revision(url: str | None) -> str | None:
    """The revision a ``local[:REV]`` URL names; None for an ordinary URL."""
    if url is None or (url != LOCAL and not url.startswith(LOCAL + ":")):
        return None
    return url.partition(":")[2] or "default"


def from_url(url: str, component: str = "control plane") -> Target:
    """``url`` (http://HOST:PORT or local[:REV]) of the control plane or (``component``
    "injector") the injector."""
    flag = INJECTOR_FLAG if component == "injector" else URL_FLAG
    rev = local_revision(url)
    if rev is not None:
        from local_cluster import config

        local = Target(f"the local cluster's control plane (revision {rev})", "", 0,
                       hint=" (is the local cluster up? remoractl local status)", revision=rev,
                       state=config.StateDir.from_env())
        local.find_injector = lambda: _local_injector(local.state, rev)
        return local.injector() if component == "injector" else local
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        port = parts.port or MONITORING_PORT
    except ValueError:  # a bad port or IPv6 literal
        parts, port = urllib.parse.urlsplit(""), -1
    if parts.scheme != "http" or not parts.hostname or port <= 0:
        raise TargetError(f"{flag} {url!r} is not an address such as "
                          f"http://127.0.0.1:{MONITORING_PORT}")
    name = "remora-control" if component == "control plane" else f"remora-{component}"
    return Target(f"the {component} at {parts.hostname}:{port}", parts.hostname, port,
                  hint=f" (is {name} running there? check {flag})")


def _local_injector(state: Any, rev: str) -> Target:
    """The injector of revision ``rev`` of the local cluster: the daemon's status names it."""
    from local_cluster import client

    try:
        status = client.checked(state, "GET", "/status")
    except client.ClusterError as exc:
        raise TargetError(f"cannot ask the local cluster at {state.root} where its injector is: {exc}; "
                          "is it up? (remoractl local status)") from None
    if rev == "default":
        url = (status.get("node") or {}).get("injectorMonitoring")
    else:
        url = next((r.get("injectorMonitoring") for r in status.get("revisions") or []
                    if r.get("name") == rev), None)
        if url is None:
            raise TargetError(f"no revision {rev!r} in the local cluster at {state.root} "
                              "(remoractl local revision list)")
    if not url:
        raise TargetError(f"the local cluster at {state.root} did not say where its injector is; "
                          "restart it: remoractl local down && remoractl local up")
    target = from_url(url, "injector")
    target.where = f"the local cluster's injector ({target.host}:{target.port}, revision {rev})"
    target.hint, target.state = "; see remoractl local status", state
    return target


def injector_of(args: argparse.Namespace, target: Target | None) -> Target:
    """``--injector-url`` when given, else the injector next to ``target`` (None: none found)."""
    url = getattr(args, "injector_url", None)
    if url:
        return from_url(url, "injector")
    if target is None:
        raise TargetError(f"no control plane, so no injector next to it; give {INJECTOR_FLAG} URL")
    return target.injector()


def from_local_cluster() -> Target | None:
    """The local cluster's control plane, when its daemon answers; else None."""
    from local_cluster import client, config

    state = config.StateDir.from_env()
    try:
        if not state.socket.exists():
            return None
    except PermissionError:
        raise TargetError(f"cannot read the local cluster's state directory {state.root}; it belongs to "
                          "root: run remoractl as root (or give --control-plane-url / --context)") from None
    try:
        status = client.checked(state, "GET", "/status")
    except client.ClusterError:
        return None
    node = status.get("node") or {}
    host, _, _ = str(node.get("controlPlane", "")).rpartition(":")
    monitoring = node.get("monitoring") or f"{host}:{MONITORING_PORT}"
    host, _, port = monitoring.rpartition(":")
    netns = node.get("netns")
    if not host or not netns:
        raise TargetError(f"the local cluster at {state.root} did not say where its control plane is; "
                          "restart it: remoractl local down && remoractl local up")

    def connect() -> socket.socket:
        from local_cluster import nsutil

        try:
            sock = nsutil.socket_in(netns)
        except PermissionError:
            raise TargetError(f"the local cluster's control plane is inside network namespace {netns}; "
                              "entering it needs root: run remoractl as root") from None
        sock.settimeout(TIMEOUT)
        sock.connect((host, int(port)))
        return sock

    return Target(f"the local cluster's control plane ({host}:{port} in {netns})", host, int(port),
                  connect, hint=f"; see remoractl local status and {state.root}/system", state=state,
                  find_injector=lambda: _local_injector(state, "default"))


def default_kubeconfig() -> str | None:
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    return path if Path(path).is_file() else None


def from_kubeconfig(kubeconfig: str | None, context: str | None, namespace: str) -> Target:
    """A port-forward to a running remora-control pod, through the kubeconfig's API server."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or default_kubeconfig()
    if path is None:
        raise TargetError("no kubeconfig found ($KUBECONFIG, ~/.kube/config); give --kubeconfig FILE")
    try:
        api = config.new_client_from_config(config_file=path, context=context)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise TargetError(f"kubeconfig {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    core = client.CoreV1Api(api)
    control = _pod_target(core, context, namespace, "control-plane")
    control.api = api
    control.find_injector = lambda: _pod_target(core, context, namespace, "injector")
    return control


def _pod_target(core: Any, context: str | None, namespace: str, component: str) -> Target:
    """A port-forward to the monitoring port of a running pod of ``component`` (the chart's labels)."""
    from kubernetes import client

    server = core.api_client.configuration.host
    ctx = context or "the current context"
    name = "remora-control" if component == "control-plane" else f"remora-{component}"
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=SELECTOR.format(component=component),
                                        field_selector="status.phase=Running", _request_timeout=TIMEOUT)
    except client.exceptions.ApiException as exc:
        raise TargetError(f"the API server at {server} ({ctx}) refused to list pods in {namespace}: "
                          f"HTTP {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3: connection refused, TLS, DNS...
        raise TargetError(f"cannot reach the Kubernetes API server at {server} ({ctx}): "
                          f"{_first_line(exc)}") from None
    want = dict(kv.split("=") for kv in SELECTOR.format(component=component).split(","))
    running = sorted(str(p.metadata.name) for p in pods.items if p.metadata is not None
                     and p.metadata.deletion_timestamp is None
                     and want.items() <= (p.metadata.labels or {}).items()  # a server may ignore it
                     and (p.status is None or p.status.phase in (None, "Running")))
    if not running:
        raise TargetError(f"no running {name} pod in namespace {namespace} ({ctx}, {server}); "
                          "is Remora installed there (docs/install.md)? --control-plane-namespace chooses "
                          "another namespace")
    pod = running[0]
    forwards: list[Any] = []  # the port-forward lives as long as this target

    def connect() -> Any:
        from kubernetes.stream import portforward

        try:
            pf = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace,
                             ports=str(MONITORING_PORT))
            sock = pf.socket(MONITORING_PORT)
            forwards.append(pf)
        except Exception as exc:  # websocket upgrade refused, RBAC (pods/portforward)...
            raise TargetError(f"cannot port-forward to pod {namespace}/{pod} ({ctx}): "
                              f"{_first_line(exc)}") from None
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        return sock

    return Target(f"{name} pod {namespace}/{pod} ({ctx}, port-forward to :{MONITORING_PORT})",
                  "localhost", MONITORING_PORT, connect)


def _first_line(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # the kubernetes client's ApiException
    if reason:
        status = getattr(exc, "status", 0)
        text = f"HTTP {status} {reason}" if status else str(reason)
    else:
        text = str(exc).strip()
    text = " ".join(text.split(" -+-+- ")[0].split())  # websocket errors append headers and body
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def resolve(args: argparse.Namespace) -> Target:
    """The target the flags, the local cluster or the kubeconfig point at (see the module doc)."""
    url = getattr(args, "control_plane_url", None)
    kubeconfig, context = getattr(args, "kubeconfig", None), getattr(args, "context", None)
    namespace = getattr(args, "control_plane_namespace", None) or NAMESPACE
    if url:
        return from_url(url)
    if kubeconfig or context:
        return from_kubeconfig(kubeconfig, context, namespace)
    local = from_local_cluster()
    if local is not None:
        return local
    if default_kubeconfig():
        return from_kubeconfig(None, None, namespace)
    raise TargetError("no control plane to talk to: the local cluster is not running (start it with "
                      "remoractl local up) and there is no kubeconfig ($KUBECONFIG, ~/.kube/config); "
                      f"or give {URL_FLAG} URL")
