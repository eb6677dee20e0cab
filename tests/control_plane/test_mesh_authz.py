"""AuthorizationPolicy enforced by real inbound proxies, configured by a real control plane.

One module-scoped mesh: an "httpbin" pod in foo (HTTP/1.1 on 8000, gRPC on 50051, tcp-echo on
9000-9002), meshed clients "sleep" (foo) and "other" (bar), and an unmeshed "outsider". Each
test applies its policies, waits for httpbin's proxy to ACK them, and sends real traffic:
curl (HTTP/1.1 and HTTP/2 prior knowledge), grpcio, plain sockets. The Istio tasks' YAML
("HTTP traffic", "TCP traffic", "Explicit deny", "Dry run") is used as the docs give it,
with only the namespace and service names adapted.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from cp_mesh import CpMesh, service
from mesh_harness import APP_UID

from local_cluster import netns

pytestmark = pytest.mark.root
BIN = Path(sys.executable).parent
APPS = str(Path(__file__).with_name("authz_apps.py"))
VIP, TCP_VIP = "198.19.0.30", "198.19.0.31"
H2_PORT = 8080
H2_FILES = ("index.html", "get", "ip", "a.json")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GRPC_DNS_RESOLVER": "native"}
HOSTS = {"httpbin.foo": VIP, "tcp-echo.foo": TCP_VIP}


class Authz:
    """The mesh, and the calls the tests make from each client pod."""

    def __init__(self, mesh: CpMesh) -> None:
        self.mesh = mesh
        self.applied: list[dict] = []
        self.server_ip = mesh.pods["httpbin"].ip

    def policies(self, *docs: str | dict) -> None:
        """Replace every AuthorizationPolicy with ``docs`` and wait for httpbin's proxy to ACK."""
        objs = [yaml.safe_load(d) if isinstance(d, str) else d for d in docs]
        if objs == self.applied:
            return
        before = self.mesh.proxy_status()["httpbin.foo"]["acked_version"]
        if objs:
            self.mesh.apply("policies", *objs)
        else:
            self.mesh.remove("policies")
        self.mesh.wait_new_version("httpbin.foo", before)
        self.applied = objs

    def curl(self, pod: str, path: str = "/", method: str = "GET", headers: dict | None = None,
             h2: bool = False, url: str | None = None, target: str | None = None) -> tuple[int, str]:
        argv = ["curl", "-s", "--max-time", "5", "-X", method, "-o", "-", "-w", "\n%{http_code}"]
        if target:
            argv += ["--request-target", target]
        if h2:
            argv.append("--http2-prior-knowledge")
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        # The HTTP/1.1 app is on 8000; HTTP/2 (prior knowledge) goes to nghttpd on 8080.
        argv.append(url or f"http://httpbin.foo:{H2_PORT if h2 else 8000}{path}")
        r = self.mesh.pods[pod].exec(argv, uid=APP_UID, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def code(self, pod: str, path: str = "/", **kw) -> int:
        return self.curl(pod, path, **kw)[0]

    def tcp(self, pod: str, port: int, host: str = "tcp-echo.foo") -> str:
        r = self.mesh.pods[pod].exec([sys.executable, APPS, "tcp", host, str(port)], uid=APP_UID,
                                     timeout=20)
        return r.stdout.strip()

    def grpc(self, pod: str) -> str:
        r = self.mesh.pods[pod].exec([sys.executable, APPS, "grpc", "httpbin.foo:50051"],
                                     uid=APP_UID, env=ENV, timeout=30)
        return r.stdout.strip() or r.stderr.strip()

    def metrics(self) -> str:
        return self.mesh.proxies["httpbin"].metrics()


@pytest.fixture(scope="module")
def az():
    reason = netns.have_root_and_tools()
    if reason:
        pytest.skip(f"real-kernel test: {reason}")
    node = netns.Node.create(netns.new_prefix("az"))
    mesh = None
    try:
        mesh = CpMesh.start(node, BIN)
        httpbin = service("httpbin", "foo", VIP, 8000, {"app": "httpbin"})
        httpbin["spec"]["ports"].append({"name": "http2", "port": H2_PORT, "targetPort": H2_PORT})
        mesh.apply("services", httpbin,
                   {**service("grpc", "foo", VIP, 50051, {"app": "httpbin"}, port_name="grpc"),
                    "metadata": {"name": "httpbin-grpc", "namespace": "foo"}},
                   {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "tcp-echo", "namespace": "foo"},
                    "spec": {"clusterIP": TCP_VIP, "selector": {"tcp": "echo"},
                             "ports": [{"name": "tcp", "port": 9000}, {"name": "tcp-other", "port": 9001}]}})
        server = mesh.add_pod("httpbin", "foo", "httpbin", {"app": "httpbin", "tcp": "echo"})
        # The gRPC service shares httpbin's VIP: give it its own address via a second Service.
        app = server.spawn([sys.executable, APPS, "serve", "8000", "50051", "9000", "9001", "9002"],
                           uid=APP_UID, gid=APP_UID)
        mesh.apps.append(app)
        www = mesh.tmp / "www"
        www.mkdir()
        for f in H2_FILES:
            (www / f).write_text(f"{f}\n")
        os.chmod(www, 0o755)
        mesh.apps.append(server.spawn(["nghttpd", "--no-tls", "-d", str(www), str(H2_PORT)],
                                      uid=APP_UID, gid=APP_UID))
        for port in (8000, 50051, 9000, H2_PORT):
            mesh_wait_port(server, port)
        mesh.add_pod("sleep", "foo", "sleep", {"app": "sleep"}, hosts=HOSTS)
        mesh.add_pod("other", "bar", "other", {"app": "other"}, hosts=HOSTS)
        mesh.add_pod("outsider", "bar", "outsider", {"app": "outsider"}, meshed=False)
        mesh.wait_synced(["httpbin.foo", "sleep.foo", "other.bar"])
        yield Authz(mesh)
    finally:
        if mesh is not None:
            mesh.close()
        node.destroy()


def mesh_wait_port(pod: netns.Pod, port: int) -> None:
    from cp_mesh import wait_for
    wait_for(lambda: pod.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip(), 15, f"port {port}")


def counter(metrics: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("remora_authz_decisions_total{"):
            have = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


ALLOW_NOTHING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec:
  {}
"""

# The "HTTP traffic" task's productpage-viewer, for the httpbin workload.
VIEWER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "httpbin-viewer"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""

# The task's details-viewer: only the sleep service account, GET only.
SLEEP_VIEWER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "httpbin-sleep-viewer"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
"""


def test_http_traffic_task_allow_nothing_then_viewers(az: Authz) -> None:
    az.policies()
    assert az.code("sleep") == 200
    az.policies(ALLOW_NOTHING)
    code, body = az.curl("sleep", "/productpage")
    assert (code, body) == (403, "RBAC: access denied")
    assert az.code("sleep", "/index.html", h2=True) == 403
    assert az.grpc("sleep").startswith("PERMISSION_DENIED")
    assert counter(az.metrics(), policy="none", action="ALLOW", result="denied") >= 3
    az.policies(ALLOW_NOTHING, VIEWER)
    assert az.code("sleep") == 200 and az.code("other") == 200
    assert az.code("sleep", method="POST") == 403
    assert az.code("sleep", "/index.html", h2=True) == 200
    assert az.code("sleep", "/index.html", h2=True, method="POST") == 403
    assert counter(az.metrics(), policy="foo/httpbin-viewer", action="ALLOW", result="allowed") >= 2
    az.policies(ALLOW_NOTHING, SLEEP_VIEWER)
    assert az.code("sleep") == 200
    assert az.code("other") == 403
    assert az.code("sleep", method="DELETE") == 403


DENY_GET = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""

DENY_GET_UNLESS_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"""

ALLOW_PATH_IP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-path-ip
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/ip"]
"""


def test_explicit_deny_task(az: Authz) -> None:
    az.policies(DENY_GET)
    assert az.code("sleep", "/get") == 403
    assert az.code("sleep", "/post", method="POST") == 200
    assert az.code("sleep", "/get", h2=True) == 403
    assert counter(az.metrics(), policy="foo/deny-method-get", action="DENY", result="denied") >= 2
    assert "policy foo/deny-method-get (DENY)" in az.mesh.proxies["httpbin"].log_text()
    az.policies(DENY_GET_UNLESS_ADMIN)
    assert az.code("sleep", "/get", headers={"x-token": "admin"}) == 200
    assert az.code("sleep", "/get", headers={"x-token": "guest"}) == 403
    assert az.code("sleep", "/get", headers={"x-token": "admin"}, h2=True) == 200
    assert az.code("sleep", "/get", headers={"x-token": "guest"}, h2=True) == 403
    az.policies(DENY_GET_UNLESS_ADMIN, ALLOW_PATH_IP)
    assert az.code("sleep", "/ip", headers={"x-token": "admin"}) == 200
    assert az.code("sleep", "/get", headers={"x-token": "admin"}) == 403
    # The path is checked normalized and without the query.
    assert az.code("sleep", "/ip?x=1", headers={"x-token": "admin"}) == 200
    assert az.code("sleep", "/foo/../ip", headers={"x-token": "admin"}) == 200


TCP_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: ["9000", "9001"]
"""

TCP_POLICY_METHODS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"""

TCP_DENY_METHODS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"""


def _tcp_echo(doc: str) -> str:
    # The pod is labelled tcp: echo here (it also plays httpbin).
    return doc.replace("app: tcp-echo", "tcp: echo")


def test_tcp_traffic_task(az: Authz) -> None:
    az.policies(_tcp_echo(TCP_POLICY))
    assert az.tcp("sleep", 9000) == "hello world"
    assert az.tcp("sleep", 9001) == "hello world"
    # 9002 is in no Service: reached at the pod IP (passthrough, plaintext), still enforced.
    assert az.tcp("sleep", 9002, host=az.server_ip) == "rejected"
    assert counter(az.metrics(), policy="foo/tcp-policy", action="ALLOW", result="allowed") >= 2
    # An ALLOW rule with an HTTP-only field never matches TCP: everything is denied.
    az.policies(_tcp_echo(TCP_POLICY_METHODS))
    assert az.tcp("sleep", 9000) == "rejected"
    assert az.tcp("sleep", 9001) == "rejected"
    # A DENY rule applies without its HTTP-only fields: port 9000 denied, 9001 allowed.
    az.policies(_tcp_echo(TCP_DENY_METHODS))
    assert az.tcp("sleep", 9000) == "rejected"
    assert az.tcp("sleep", 9001) == "hello world"


DRY_RUN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""


def test_dry_run_task(az: Authz) -> None:
    az.policies(DRY_RUN)
    assert az.code("sleep", "/headers") == 200
    assert az.code("sleep", "/ip") == 200
    m = az.metrics()
    assert counter(m, policy="foo/deny-path-headers", action="DENY", result="dry_run_denied") >= 1
    assert counter(m, policy="none", result="dry_run_allowed") >= 1
    assert "dry-run: would deny GET httpbin.foo:8000/headers" in az.mesh.proxies["httpbin"].log_text()


def policy(name: str, action: str, rules: list, ns: str = "foo", **spec) -> dict:
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"action": action, "rules": rules, **spec}}


def test_sources_on_http_and_plaintext(az: Authz) -> None:
    outsider_url = f"http://{az.server_ip}:8000/"
    az.policies(policy("ns", "ALLOW", [{"from": [{"source": {"namespaces": ["foo"]}}]}]))
    assert (az.code("sleep"), az.code("other")) == (200, 403)
    az.policies(policy("notns", "ALLOW", [{"from": [{"source": {"notNamespaces": ["foo"]}}]}]))
    assert (az.code("sleep"), az.code("other")) == (403, 200)
    # Plaintext (PERMISSIVE) has no principal: "*" means "any mTLS identity".
    az.policies(policy("mtls", "ALLOW", [{"from": [{"source": {"principals": ["*"]}}]}]))
    assert az.code("sleep") == 200
    assert az.code("outsider", url=outsider_url) == 403
    az.policies(policy("plain", "ALLOW", [{"from": [{"source": {"notPrincipals": ["*"]}}]}]))
    assert (az.code("sleep"), az.code("outsider", url=outsider_url)) == (403, 200)
    outsider_ip = az.mesh.pods["outsider"].ip
    az.policies(policy("ip", "DENY", [{"from": [{"source": {"ipBlocks": [f"{outsider_ip}/32"]}}]}]))
    assert (az.code("sleep"), az.code("outsider", url=outsider_url)) == (200, 403)
    az.policies(policy("notip", "DENY", [{"from": [{"source": {"notIpBlocks": [f"{outsider_ip}/32"]}}]}]))
    assert (az.code("sleep"), az.code("outsider", url=outsider_url)) == (403, 200)
    az.policies(policy("remote", "ALLOW", [{"from": [{"source": {"remoteIpBlocks": ["198.18.0.0/16"]}}]}]))
    assert az.code("outsider", url=outsider_url) == 200
    az.policies(policy("notremote", "ALLOW", [{"from": [{"source": {"notRemoteIpBlocks": ["198.18.0.0/16"]}}]}]))
    assert (az.code("sleep"), az.code("outsider", url=outsider_url)) == (403, 403)


def test_operations_and_conditions(az: Authz) -> None:
    az.policies(policy("ops", "ALLOW", [{"to": [{"operation": {
        "hosts": ["httpbin.foo"], "ports": ["8000", str(H2_PORT)], "paths": ["/api/*", "*.json"],
        "notPaths": ["/api/admin*"], "notMethods": ["DELETE"]}}]}]))
    assert az.code("sleep", "/api/x") == 200
    assert az.code("sleep", "/a.json", h2=True) == 200
    assert az.code("sleep", "/api/admin/1") == 403
    assert az.code("sleep", target="http://httpbin.foo:8000/api/admin/1") == 403  # absolute-form
    assert az.code("sleep", "/api/x", method="DELETE") == 403
    assert az.code("sleep", "/other") == 403
    assert az.code("sleep", "/api/x", headers={"Host": "evil.foo"}) == 403
    az.policies(policy("noth", "DENY", [{"to": [{"operation": {"notHosts": ["httpbin.foo"]}}]},
                                        {"to": [{"operation": {"notPorts": ["8000"]}}]}]))
    assert az.code("sleep", "/", headers={"Host": "x"}) == 403
    assert az.code("sleep") == 200
    assert az.grpc("sleep").startswith("PERMISSION_DENIED")  # port 50051 is not 8000
    sleep_ip = az.mesh.pods["sleep"].ip
    az.policies(policy("when", "ALLOW", [{"when": [
        {"key": "source.ip", "values": [sleep_ip]},
        {"key": "source.namespace", "values": ["foo"]},
        {"key": "source.principal", "values": ["cluster.local/ns/foo/sa/sleep"]},
        {"key": "destination.ip", "values": [az.server_ip]},
        {"key": "destination.port", "values": ["8000", "50051"]},
        {"key": "connection.sni", "notValues": ["forbidden.example"]},
        {"key": "request.headers[x-team]", "values": ["blue*"]},
    ]}]))
    assert az.code("sleep", headers={"x-team": "blue-1"}) == 200
    assert az.code("sleep", headers={"x-team": "red"}) == 403
    assert az.code("other", headers={"x-team": "blue-1"}) == 403
    assert az.grpc("sleep").startswith("PERMISSION_DENIED")  # no x-team metadata


def test_audit_root_namespace_selector_and_grpc_allow(az: Authz) -> None:
    az.policies(policy("audit-all", "AUDIT", [{}]),
                policy("mesh-deny-deletes", "DENY", [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
                       ns="remora-system"),
                policy("not-me", "DENY", [{}], selector={"matchLabels": {"app": "nobody"}}),
                policy("by-service", "DENY", [{"to": [{"operation": {"methods": ["PATCH"]}}]}],
                       targetRefs=[{"kind": "Service", "group": "", "name": "httpbin"}]),
                policy("ext-authz", "CUSTOM", [{"to": [{"operation": {"paths": ["/ext/*"]}}]}],
                       provider={"name": "my-ext-authz"}),
                policy("grpc-only", "ALLOW", [{"to": [{"operation": {"paths": ["/authz.Echo/*", "/", "/ext/*"]}}]}]))
    assert az.grpc("sleep") == "OK"
    assert az.code("sleep") == 200
    assert az.code("sleep", method="DELETE") == 403
    assert az.code("sleep", method="PATCH") == 403  # targetRefs: the Service selecting httpbin
    assert az.code("sleep", "/ext/1") == 403  # CUSTOM without an external authorizer: denied
    m = az.metrics()
    assert counter(m, policy="foo/audit-all", action="AUDIT", result="audited") >= 2
    assert counter(m, policy="remora-system/mesh-deny-deletes", result="denied") >= 1
    assert counter(m, policy="foo/not-me") == 0
    assert counter(m, policy="foo/by-service", action="DENY", result="denied") >= 1
    assert counter(m, policy="foo/ext-authz", action="CUSTOM", result="denied") >= 1


def test_plaintext_h2c_and_unknown_methods_are_http_on_a_permissive_inbound(az: Authz) -> None:
    """Detection: an unmeshed client's h2c (preface + SETTINGS in one segment) and a PROPFIND
    reach the app through the HTTP handlers (counted, policed), not as raw bytes."""
    h2c = f"http://{az.server_ip}:{H2_PORT}"
    h1 = f"http://{az.server_ip}:8000"
    az.policies(policy("detect", "DENY", [
        {"to": [{"operation": {"paths": ["/ip"]}}]},
        {"to": [{"operation": {"methods": ["PROPFIND"], "paths": ["/locked"]}}]}]))
    before = az.metrics()
    assert az.code("outsider", url=f"{h2c}/index.html", h2=True) == 200
    assert az.code("outsider", url=f"{h2c}/ip", h2=True) == 403
    code, body = az.curl("outsider", url=f"{h1}/dav/", method="PROPFIND",
                         headers={"x-forwarded-client-cert": "By=forged;URI=spiffe://evil"})
    assert (code, body) == (200, "ok PROPFIND /dav/ xfcc=-\n")  # the forged identity was removed
    assert az.code("outsider", url=f"{h1}/locked", method="PROPFIND") == 403
    after = az.metrics()
    assert counter(after, policy="foo/detect", result="denied") - counter(
        before, policy="foo/detect", result="denied") == 2


def test_connection_sni_of_app_tls_on_a_plaintext_port(az: Authz) -> None:
    """App TLS from an unmeshed client (PERMISSIVE) is relayed opaque; its ClientHello's SNI is
    the connection.sni a TCP rule sees."""
    az.policies(policy("sni", "DENY", [{"when": [{"key": "connection.sni", "values": ["*.blocked"]}]}]))

    def probe(sni: str) -> str:
        r = az.mesh.pods["outsider"].exec([sys.executable, APPS, "tls", az.server_ip, "9001", sni],
                                          uid=APP_UID, timeout=20)
        return r.stdout.strip()

    assert probe("api.allowed") == "relayed"
    assert probe("api.blocked") == "rejected"
    assert counter(az.metrics(), policy="foo/sni", action="DENY", result="denied") >= 1
