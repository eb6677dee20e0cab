"""The checks behind ``remoractl check``: each returns one ``Result`` (passed or not, what was
seen, and a hint when it failed). The CLI (``remoractl/check.py``) picks the inputs.

Three groups, as ``linkerd check`` has them:
- pre-install: kernel features, iptables backends, a Python uid 1337 can run, permissions;
- install: control plane and injector ready, webhook certificate valid and matching, CA root
  expiry, every injected namespace holds the root certificate;
- proxy: data plane up to date, every proxy SYNCED, proxy certificates not near expiry.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from control_plane.api import annotations as ann
from control_plane.api.ports import OUTBOUND_PORT, PROXY_UID
from remoractl import meshapi
from remoractl.target import INJECTOR_URL_ENV, Target, TargetError

ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY = "remora-ca-root-cert", "root-cert.pem"
EXPIRY_MARGIN = dt.timedelta(days=30)  # a mesh root that expires sooner must be rotated now


@dataclass
class Result:
    group: str
    name: str
    ok: bool
    detail: str
    hint: str = ""

    def __str__(self) -> str:
        mark = "\u2714" if self.ok else "\u2716"
        line = f"{mark} {self.name}: {self.detail}"
        return line + (f"\n    hint: {self.hint}" if not self.ok and self.hint else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(argv: list[str], timeout: float = 10.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:200]


# -- pre-install --------------------------------------------------------------------------------

PRE = "pre-install"


def permissions(euid: int | None = None) -> Result:
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return Result(PRE, "permissions", True, "running as root")
    return Result(PRE, "permissions", False, f"running as uid {euid}, not root",
                  "the local cluster and remora-init need root (network namespaces, iptables); "
                  "run as root, or install on Kubernetes where the init container has NET_ADMIN")


def network_namespaces(ip: str = "ip") -> Result:
    name = "network namespaces"
    if shutil.which(ip) is None:
        return Result(PRE, name, False, f"{ip!r} not found", "install iproute2 (apt-get install iproute2)")
    ns = f"rl-check-{uuid.uuid4().hex[:8]}"
    add = _run([ip, "netns", "add", ns])
    if add.returncode != 0:
        return Result(PRE, name, False, f"ip netns add failed: {_first_line(add.stderr)}",
                      "the kernel needs CONFIG_NET_NS, and this needs root")
    _run([ip, "netns", "delete", ns])
    return Result(PRE, name, True, "a namespace can be made and removed")


def iptables_backends(legacy: str = "iptables-legacy", nft: str = "iptables-nft") -> Result:
    """remora-init writes the legacy tables (python-iptables); the nat table must be usable."""
    name = "iptables backends"
    found = [b for b in (legacy, nft) if shutil.which(b)]
    if legacy not in found:
        return Result(PRE, name, False, f"{legacy} not found (have: {', '.join(found) or 'none'})",
                      "install the iptables package (Debian: apt-get install iptables); remora-init "
                      "writes the legacy tables through python-iptables")
    r = _run([legacy, "-t", "nat", "-S"])
    if r.returncode != 0:
        return Result(PRE, name, False, f"{legacy} -t nat -S failed: {_first_line(r.stderr)}",
                      "the nat table needs root and the kernel's iptable_nat support")
    return Result(PRE, name, True, f"{', '.join(found)}; legacy nat table usable")


def kernel_features(ip: str = "ip", legacy: str = "iptables-legacy") -> Result:
    """REDIRECT and the owner match, tried for real inside a throwaway network namespace."""
    name = "kernel features (REDIRECT, owner match)"
    if shutil.which(ip) is None or shutil.which(legacy) is None:
        return Result(PRE, name, False, f"cannot try: {ip} or {legacy} is missing",
                      "install iproute2 and iptables")
    ns = f"rl-check-{uuid.uuid4().hex[:8]}"
    if _run([ip, "netns", "add", ns]).returncode != 0:
        return Result(PRE, name, False, "cannot make a network namespace to try the rules in",
                      "see the network namespaces check")
    try:
        rule = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner", "!", "--uid-owner",
                str(PROXY_UID), "-j", "REDIRECT", "--to-ports", str(OUTBOUND_PORT)]
        r = _run([ip, "netns", "exec", ns, legacy, *rule])
        if r.returncode != 0:
            return Result(PRE, name, False, f"the redirect rule was refused: {_first_line(r.stderr)}",
                          "the kernel needs the nat table, the REDIRECT target and the owner match "
                          "(xt_REDIRECT, xt_owner)")
        return Result(PRE, name, True, "a REDIRECT rule with an owner match loads")
    finally:
        _run([ip, "netns", "delete", ns])


def python_for_proxy(python: str, uid: int = PROXY_UID) -> Result:
    """The proxy runs as uid 1337: it must be able to execute this Python and import Remora."""
    name = f"Python usable by uid {uid}"
    if os.geteuid() != 0:
        return Result(PRE, name, False, "cannot try without root", "run remoractl check as root")
    try:
        r = _run([python, "-c", "import control_plane.api.version as v; print(v.version())"],
                 user=uid, group=uid, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"})
    except OSError as exc:  # the exec itself failed: not executable for that uid
        r = subprocess.CompletedProcess([], 126, "", str(exc))
    if r.returncode != 0:
        return Result(PRE, name, False, f"{python}: {_first_line(r.stderr) or 'exit ' + str(r.returncode)}",
                      "a Python under a private home directory (e.g. pyenv in /root, mode 0700) cannot "
                      "be run by uid 1337; build the virtualenv from /usr/bin/python3 "
                      "(scripts/find-python picks one) or set REMORA_PYTHON")
    return Result(PRE, name, True, f"{python} runs Remora {r.stdout.strip()} as uid {uid}")


# -- install ------------------------------------------------------------------------------------

INSTALL = "install"


def control_plane_ready(target: Target) -> Result:
    name = "control plane ready"
    ans = meshapi.component_version(target, "control-plane")
    if ans.body is None:
        return Result(INSTALL, name, False, ans.error or "?")  # the error names what to do
    try:
        code, built = target.get("/debug/proxies")  # what /ready answers, as JSON
    except TargetError as exc:
        return Result(INSTALL, name, False, str(exc))
    if code == 200 and isinstance(built, dict) and built.get("last_build_at") is None:
        return Result(INSTALL, name, False, "running but has built no configuration yet",
                      "see the control plane's log: its source (files or Kubernetes API) is not read")
    return Result(INSTALL, name, True, f"{ans.body.get('version')} (revision {ans.body.get('revision')}), "
                  f"{target.where}")


def injector_ready(ans: meshapi.Answer) -> Result:
    """``ans``: the injector's /version (``meshapi.injector_version``)."""
    name = "injector ready"
    if ans.body is None:
        return Result(INSTALL, name, False, ans.error or "?",
                      f"set --injector-url (or ${INJECTOR_URL_ENV}) to remora-injector's "
                      "monitoring port; is it running?")
    b = ans.body
    return Result(INSTALL, name, True, f"{b['version']} (revision {b['revision']}), injects proxy "
                  f"{b['proxyVersion']}, template {b['templateHash']}")


def webhook_certificate(address: str, ca_bundle: Path, server_name: str,
                        now: dt.datetime | None = None, margin: dt.timedelta = EXPIRY_MARGIN) -> Result:
    """Connect as the API server does: verify against the webhook's caBundle and its name."""
    from cryptography import x509

    name = "webhook certificate"
    host, _, port = address.rpartition(":")
    try:
        ctx = ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        return Result(INSTALL, name, False, f"cannot read the CA bundle {ca_bundle}: {exc}",
                      "the caBundle of the MutatingWebhookConfiguration, as a PEM file")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        return Result(INSTALL, name, False, f"{address}: {exc.verify_message}",
                      "the serving certificate does not match the caBundle or the name "
                      f"{server_name}; regenerate it (helm upgrade) or fix caBundle")
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Result(INSTALL, name, False, f"cannot connect to {address}: {exc}",
                      "is remora-injector running and its Service pointing at it?")
    cert = x509.load_der_x509_certificate(der or b"")
    left = cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))
    if left < margin:
        return Result(INSTALL, name, False, f"verified for {server_name} but expires "
                      f"{cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days)",
                      "rotate the webhook certificate (delete the Secret and helm upgrade)")
    return Result(INSTALL, name, True, f"{server_name} verified against the caBundle, "
                  f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")


def root_expiry(root_pem: bytes, now: dt.datetime | None = None, margin: dt.timedelta = EXPIRY_MARGIN) -> Result:
    from cryptography import x509

    name = "CA root expiry"
    try:
        certs = x509.load_pem_x509_certificates(root_pem)
    except ValueError as exc:
        return Result(INSTALL, name, False, f"the root is not PEM: {exc}", "check the CA Secret / files")
    now = now or dt.datetime.now(dt.UTC)
    soonest = min(certs, key=lambda c: c.not_valid_after_utc)
    left = soonest.not_valid_after_utc - now
    if left < margin:
        state = "expired" if left.total_seconds() <= 0 else f"expires in {left.days} days"
        return Result(INSTALL, name, False, f"{soonest.subject.rfc4514_string()} {state} "
                      f"({soonest.not_valid_after_utc:%Y-%m-%d})",
                      "rotate the mesh root now: add the new root as an extra root (--extra-roots), "
                      "let every proxy pick it up, then switch the signing CA")
    return Result(INSTALL, name, True, f"valid until {soonest.not_valid_after_utc:%Y-%m-%d} "
                  f"({left.days} days)")


def namespaces_have_root(namespaces: list[dict[str, Any]], configmaps: dict[str, dict[str, Any]],
                         root_pem: bytes | None) -> Result:
    """Every injected namespace (inject=enabled or a rev label) holds remora-ca-root-cert."""
    name = "root certificate in every injected namespace"
    injected = sorted(n["metadata"]["name"] for n in namespaces
                      if (n["metadata"].get("labels") or {}).get(ann.INJECT_LABEL) == ann.NAMESPACE_INJECT_VALUE
                      or ann.REV_LABEL in (n["metadata"].get("labels") or {}))
    missing, stale = [], []
    for ns in injected:
        cm = configmaps.get(ns)
        pem = ((cm or {}).get("data") or {}).get(ROOT_CERT_KEY)
        if not pem:
            missing.append(ns)
        elif root_pem is not None and pem.strip() != root_pem.decode().strip():
            stale.append(ns)
    if missing or stale:
        parts = ([f"missing in {', '.join(missing)}"] if missing else []) + (
            [f"a different root in {', '.join(stale)}"] if stale else [])
        return Result(INSTALL, name, False, "; ".join(parts),
                      f"proxies there cannot start (their trust volume is ConfigMap {ROOT_CERT_CONFIGMAP}); "
                      "create it from the mesh root (key root-cert.pem)")
    return Result(INSTALL, name, True, f"{len(injected)} namespace(s): {', '.join(injected) or 'none injected'}")


def kube_namespaces_and_roots(api_client: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Namespaces and each one's remora-ca-root-cert ConfigMap, from the Kubernetes API."""
    from kubernetes import client as k8s

    api = k8s.CoreV1Api(api_client)
    raw = api.api_client.sanitize_for_serialization
    namespaces = [raw(n) for n in api.list_namespace().items]
    cms = {}
    for cm in api.list_config_map_for_all_namespaces(field_selector=f"metadata.name={ROOT_CERT_CONFIGMAP}").items:
        body: dict[str, Any] = raw(cm)
        meta = body.get("metadata") or {}
        if meta.get("name") == ROOT_CERT_CONFIGMAP:  # also where a server ignores the selector
            cms[str(meta.get("namespace"))] = body
    return namespaces, cms


# -- proxy --------------------------------------------------------------------------------------

PROXY = "proxy"


def data_plane_up_to_date(proxies: list[dict[str, Any]], injector: dict[str, Any] | None) -> Result:
    name = "data plane up to date"
    if injector is None:
        return Result(PROXY, name, False, "cannot tell: the injector is not reachable",
                      "set --injector-url to remora-injector's monitoring port")
    old = [(p["proxy_id"], why) for p in proxies for out, why in [meshapi.outdated(p, injector)] if out]
    if old:
        shown = "; ".join(f"{pid} ({why})" for pid, why in old[:5]) + (" ..." if len(old) > 5 else "")
        return Result(PROXY, name, False, f"{len(old)} of {len(proxies)} OUTDATED: {shown}",
                      "restart their workloads (remoractl upgrade, or kubectl rollout restart)")
    return Result(PROXY, name, True, f"{len(proxies)} proxies on {injector['proxyVersion']}, "
                  f"template {injector['templateHash']}")


def proxies_synced(proxies: list[dict[str, Any]]) -> Result:
    name = "every proxy SYNCED"
    bad = [p for p in proxies if p["status"] != "SYNCED"]
    if bad:
        shown = "; ".join(f"{p['proxy_id']} {p['status']}" + (f" ({p['last_error']})" if p.get("last_error") else "")
                          for p in bad[:5])
        return Result(PROXY, name, False, f"{len(bad)} of {len(proxies)} not SYNCED: {shown}",
                      "remoractl proxy-status shows why; an ERROR proxy NACKed its configuration")
    return Result(PROXY, name, True, f"{len(proxies)} proxies SYNCED")


def proxy_certificates(proxies: list[dict[str, Any]], margin: dt.timedelta,
                       now: dt.datetime | None = None) -> Result:
    name = "proxy certificates not near expiry"
    now = now or dt.datetime.now(dt.UTC)
    bad = []
    for p in proxies:
        raw = p.get("cert_not_after")
        if not raw:
            bad.append(f"{p['proxy_id']} has no certificate")
            continue
        left = dt.datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) - now
        if left < margin:
            bad.append(f"{p['proxy_id']} expires {raw}")
    if bad:
        return Result(PROXY, name, False, f"{len(bad)} of {len(proxies)}: {'; '.join(bad[:5])}",
                      "proxies renew at half their lifetime; one that does not cannot reach the CA "
                      "(see its log and the control plane's auth_failures/csr_refused metrics)")
    return Result(PROXY, name, True, f"{len(proxies)} certificates valid for more than {margin}")


def run_all(checks: list[Callable[[], Result]]) -> list[Result]:
    out = []
    for check in checks:
        try:
            out.append(check())
        except Exception as exc:  # a check that breaks is a failed check, never a traceback
            fn = getattr(check, "func", check)  # a functools.partial names its function
            name = getattr(fn, "__name__", "check").replace("_", " ")
            out.append(Result("?", name, False, f"the check itself failed: {exc}", "report this"))
    return out
