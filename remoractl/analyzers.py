"""The checks behind ``remoractl analyze``: pure functions of a set of Kubernetes objects.

Each finding is a ``Message`` with Istio's code and name where Istio has one (so operators can
look it up and suppress it the same way) and a Remora code (RMR....) where it does not. What the
control plane does not implement comes from its own parsers (``Registry.from_objects``: the same
notes the control plane logs and sends to proxies), so there is one source for "unsupported".
The list of codes is in docs/analyze.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from control_plane import istio
from control_plane.api import annotations as ann
from control_plane.api import model
from control_plane.istio import REPORTED_KINDS as NOT_IMPLEMENTED_KINDS
from control_plane.registry import KINDS, Registry
from control_plane.resources import key_of, resolve_host, selector_matches

ERROR, WARNING, INFO = "Error", "Warning", "Info"
LEVELS = (ERROR, WARNING, INFO)

# code -> (name, level). Istio's codes keep Istio's names; RMR codes are Remora's own.
CODES: dict[str, tuple[str, str]] = {
    "IST0101": ("ReferencedResourceNotFound", ERROR),
    "IST0102": ("NamespaceNotInjected", INFO),
    "IST0106": ("SchemaValidationError", ERROR),
    "IST0108": ("UnknownAnnotation", WARNING),
    "IST0109": ("ConflictingMeshGatewayVirtualServiceHosts", WARNING),
    "IST0125": ("InvalidAnnotation", ERROR),
    "IST0127": ("NoMatchingWorkloadsFound", WARNING),
    "IST0131": ("VirtualServiceIneffectiveMatch", WARNING),
    "RMR0001": ("NotImplementedField", WARNING),
    "RMR0002": ("MeshWidePolicyOutsideRootNamespace", WARNING),
    "RMR0003": ("NotImplementedKind", WARNING),
}
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
_NOTE = re.compile(r"^(?P<kind>\w+)/(?P<ns>[^/]*)/(?P<name>[^:]+): (?P<text>.*)$")
_PRINCIPAL = re.compile(r"^(?:spiffe://)?[^/]+/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


@dataclass(frozen=True)
class Message:
    code: str
    resource: str  # "Kind namespace/name"
    text: str

    @property
    def name(self) -> str:
        return CODES[self.code][0]

    @property
    def level(self) -> str:
        return CODES[self.code][1]

    def __str__(self) -> str:
        return f"{self.level} [{self.code}] ({self.resource}) {self.text}"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "name": self.name, "level": self.level, **asdict(self)}


def _res(kind: str, ns: str, name: str) -> str:
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


@dataclass
class Mesh:
    """The objects, indexed the way the analyzers ask for them."""

    objects: list[Mapping[str, Any]]
    root_namespace: str = "remora-system"

    def __post_init__(self) -> None:
        self.registry = Registry.from_objects(self.objects)
        self.hosts = set(self.registry.services)
        self.service_accounts: set[tuple[str, str]] = set()
        self.pod_labels: list[tuple[str, Mapping[str, str]]] = []  # (namespace, labels)
        # Every VirtualService, also those the registry drops for sharing a host.
        self.virtual_services: list[istio.VirtualService] = []
        for obj in self.objects:
            if obj.get("kind") == "VirtualService":
                with contextlib.suppress(KeyError, TypeError, ValueError):  # IST0106 reports it
                    self.virtual_services.append(istio.parse_virtual_service(obj)[0])
            kind, ns, name = key_of(obj)
            ns = ns or "default"
            if kind == "ServiceEntry":
                self.hosts.update(resolve_host(h, ns) for h in (obj.get("spec") or {}).get("hosts") or [])
            elif kind == "ServiceAccount":
                self.service_accounts.add((ns, name))
            for meta, spec in _pod_metas(obj):
                self.pod_labels.append((ns, meta.get("labels") or {}))
                sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
                self.service_accounts.add((ns, sa))

    def namespaces_with_pods(self) -> set[str]:
        return {ns for ns, _ in self.pod_labels}


def _pod_metas(obj: Mapping[str, Any]) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(metadata, spec) of the pod, or of each workload's pod template."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield obj.get("metadata") or {}, spec
    elif kind in WORKLOAD_KINDS:
        if kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        tpl = spec.get("template") or {}
        yield tpl.get("metadata") or {}, tpl.get("spec") or {}


def not_implemented(mesh: Mesh) -> list[Message]:
    """The control plane's own notes (unsupported fields) and the objects it rejects."""
    out = []
    for notes, code in ((mesh.registry.unsupported, "RMR0001"), (mesh.registry.errors, "IST0106")):
        for note in notes:
            m = _NOTE.match(note)
            res = _res(m["kind"], m["ns"] if m["ns"] != "-" else "", m["name"]) if m else "?"
            if m and m["text"] == f"{m['kind']} is not implemented (no effect)":
                continue  # a whole kind Remora does not implement: kinds() says it (RMR0003)
            out.append(Message(code, res, m["text"] if m else note))
    return out


def kinds(mesh: Mesh) -> list[Message]:
    """Istio resources of a kind the control plane does not read at all (registry.KINDS)."""
    out = []
    for obj in mesh.objects:
        kind, ns, name = key_of(obj)
        group = str(obj.get("apiVersion", "")).split("/")[0]
        if group in ISTIO_GROUPS and (kind not in KINDS or kind in NOT_IMPLEMENTED_KINDS):
            out.append(Message("RMR0003", _res(kind, ns or "default", name),
                               f"Remora does not implement {kind} ({group}); it has no effect"))
    return out


def namespaces(mesh: Mesh) -> list[Message]:
    """Namespaces with workloads that nothing selects for injection (Istio: IST0102)."""
    out = []
    with_pods = mesh.namespaces_with_pods()
    for obj in mesh.objects:
        kind, _, name = key_of(obj)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if kind == "Namespace" and name in with_pods and ann.REV_LABEL not in labels \
                and labels.get(ann.INJECT_LABEL) != ann.NAMESPACE_INJECT_VALUE:
            out.append(Message("IST0102", _res(kind, "", name),
                               f"The namespace is not enabled for Remora injection. Label it "
                               f"{ann.INJECT_LABEL}={ann.NAMESPACE_INJECT_VALUE} or {ann.REV_LABEL}=<revision>"))
    return out


def references(mesh: Mesh) -> list[Message]:
    """VirtualService hosts and subsets, DestinationRule hosts, AuthorizationPolicy principals."""
    out = []
    reg = mesh.registry
    for vs in mesh.virtual_services:
        res = _res("VirtualService", vs.namespace, vs.name)
        for i, route in enumerate(vs.routes):
            for d in route.destinations:
                if d.host not in mesh.hosts:
                    out.append(Message("IST0101", res, f"Referenced host not found: {d.host!r} "
                                       f"(spec.http[{i}] route destination)"))
                elif d.subset and d.subset not in {s.name for s in _subsets(reg, d.host)}:
                    out.append(Message("IST0101", res, f"Referenced host+subset in destinationrule "
                                       f"not found: {d.host!r}+{d.subset!r}"))
    for dr in reg.destination_rules.values():
        if "*" not in dr.host and dr.host not in mesh.hosts:  # a wildcard may match later services
            out.append(Message("IST0101", _res("DestinationRule", dr.namespace, dr.name),
                               f"Referenced host not found: {dr.host!r}"))
    for obj in mesh.objects:
        if obj.get("kind") != "AuthorizationPolicy":
            continue
        _, ns, name = key_of(obj)
        for principal in _principals(obj):
            m = _PRINCIPAL.match(principal)
            if m and "*" not in principal and (m["ns"], m["sa"]) not in mesh.service_accounts:
                out.append(Message("IST0101", _res("AuthorizationPolicy", ns or "default", name),
                                   f"Referenced service account not found: {m['ns']}/{m['sa']} "
                                   f"(principal {principal!r})"))
    return out


def _subsets(reg: Registry, host: str) -> tuple[istio.Subset, ...]:
    dr = reg.destination_rules.get(host)
    return dr.subsets if dr else ()


def _principals(obj: Mapping[str, Any]) -> list[str]:
    found = []
    for rule in (obj.get("spec") or {}).get("rules") or []:
        for frm in (rule or {}).get("from") or []:
            found += [str(p) for p in ((frm or {}).get("source") or {}).get("principals") or []]
    return found


def conflicts(mesh: Mesh) -> list[Message]:
    """Two VirtualServices for one host; routes that can never match (shadowed)."""
    out = []
    by_host: dict[str, list[str]] = {}
    for obj in mesh.objects:
        if obj.get("kind") == "VirtualService":
            _, ns, name = key_of(obj)
            for h in (obj.get("spec") or {}).get("hosts") or []:
                by_host.setdefault(resolve_host(str(h), ns or "default"), []).append(f"{ns or 'default'}/{name}")
    for host, names in sorted(by_host.items()):
        if len(names) > 1:
            for n in names:
                ns, name = n.split("/")
                out.append(Message("IST0109", _res("VirtualService", ns, name),
                                   f"The VirtualServices {', '.join(names)} define the same host "
                                   f"({host}): only the first one is used"))
    for vs in mesh.virtual_services:
        earlier: list[model.RouteMatch | None] = []  # None: a catch-all route
        for i, vr in enumerate(vs.routes):
            matches = vr.route.matches
            for j, match in enumerate(matches or (None,)):
                if any(_covers(e, match) for e in earlier):
                    where = f"spec.http[{i}]" + (f".match[{j}]" if match is not None else "")
                    out.append(Message("IST0131", _res("VirtualService", vs.namespace, vs.name),
                                       f"{where} is shadowed by an earlier route and never matches"))
            earlier += list(matches or (None,))
    return out


def _string_covers(a: model.StringMatch | None, b: model.StringMatch | None) -> bool:
    """Does every value ``b`` matches also match ``a``? (False when it cannot be told: regex.)"""
    if a is None:
        return True
    if b is None or a.regex is not None or b.regex is not None:
        return False
    if a.exact is not None:
        return b.exact == a.exact
    if a.prefix is not None:
        value = b.exact if b.exact is not None else b.prefix
        return value is not None and value.startswith(a.prefix)
    return True  # a matches any present value; b requires one


def _covers(a: model.RouteMatch | None, b: model.RouteMatch | None) -> bool:
    """Does every request matching ``b`` also match ``a``? Conservative: unsure means no."""
    if a is None:
        return True
    if b is None:
        return a == model.RouteMatch(name=a.name)
    if a.ignore_uri_case != b.ignore_uri_case or a.port not in (None, b.port):
        return False
    if a.source_namespace not in (None, b.source_namespace):
        return False
    if any(b.source_labels.get(k) != v for k, v in a.source_labels.items()):
        return False
    if a.without_headers and a.without_headers != b.without_headers:
        return False
    for mine, theirs in ((a.headers, b.headers), (a.query_params, b.query_params)):
        if any(k not in theirs or not _string_covers(v, theirs[k]) for k, v in mine.items()):
            return False
    return all(_string_covers(getattr(a, f), getattr(b, f))
               for f in ("uri", "scheme", "method", "authority"))


def policies(mesh: Mesh) -> list[Message]:
    """Selector-less policies meant mesh-wide outside the root namespace; selectors matching nothing."""
    out = []
    with_pods = mesh.namespaces_with_pods()
    for obj in mesh.objects:
        kind, ns, name = key_of(obj)
        if kind not in ("PeerAuthentication", "AuthorizationPolicy"):
            continue
        ns = ns or "default"
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        if selector:
            if not any(pns == ns and selector_matches(selector, labels) for pns, labels in mesh.pod_labels):
                out.append(Message("IST0127", _res(kind, ns, name),
                                   f"No matching workloads for this resource with the following labels: "
                                   f"{','.join(f'{k}={v}' for k, v in sorted(selector.items()))}"))
        elif ns != mesh.root_namespace and ns not in with_pods:
            # Namespace-wide by Istio's rules; with no workload here it was likely meant mesh-wide.
            out.append(Message("RMR0002", _res(kind, ns, name),
                               f"applies to namespace {ns} only, which has no workloads; a mesh-wide "
                               f"policy belongs in the root namespace {mesh.root_namespace}"))
    return out


def annotation_values(mesh: Mesh) -> list[Message]:
    """``remora.dev/`` annotations and labels on pods, pod templates and namespaces."""
    out = []
    for obj in mesh.objects:
        kind, ns, name = key_of(obj)
        res = _res(kind, ns or ("" if kind == "Namespace" else "default"), name)
        metas = [meta for meta, _ in _pod_metas(obj)]
        if kind == "Namespace":
            metas = [obj.get("metadata") or {}]
        for meta in metas:
            annots = meta.get("annotations") or {}
            for key in ann.unknown_annotations(annots):
                out.append(Message("IST0108", res, f"Unknown annotation: {key}"))
            for key, value in annots.items():
                spec = ann.BY_KEY.get(key)
                if spec is None:
                    continue
                try:
                    spec.parse(str(value))
                except ValueError as exc:
                    out.append(Message("IST0125", res, f"Invalid annotation {key}: {exc}"))
            labels = meta.get("labels") or {}
            inject = labels.get(ann.INJECT_LABEL)
            ok = (ann.NAMESPACE_INJECT_VALUE, "disabled") if kind == "Namespace" else ("true", "false")
            if inject is not None and inject not in ok:
                out.append(Message("IST0125", res, f"Invalid label {ann.INJECT_LABEL}={inject!r}; "
                                   f"accepted: {' or '.join(ok)}"))
            rev = labels.get(ann.REV_LABEL)
            if rev is not None and not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", str(rev)):
                out.append(Message("IST0125", res, f"Invalid label {ann.REV_LABEL}={rev!r}; "
                                   "accepted: a DNS label (the revision's name)"))
    return out


ANALYZERS = (not_implemented, kinds, references, conflicts, policies, annotation_values, namespaces)


def analyze(objects: Sequence[Mapping[str, Any]], root_namespace: str = "remora-system") -> list[Message]:
    mesh = Mesh(list(objects), root_namespace)
    found = [m for a in ANALYZERS for m in a(mesh)]
    return sorted(set(found), key=lambda m: (LEVELS.index(m.level), m.resource, m.code, m.text))

