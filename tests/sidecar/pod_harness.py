"""The traffic table's pod mode: the same interface as ``traffic_harness.Harness``, through real
meshed pods.

A real ``remora-control`` (tests/control_plane/cp_mesh.py) reads a manifest directory; every Pod
of the task workload files (bookinfo, httpbin) becomes a network namespace with the Pod's own
address, name, labels and service account, remora-init's iptables rules and a remora-proxy
(access log in JSON), and, where a Service selects it, an app (``traffic_harness.py serve``) on
each target port, named by the pod's address as on loopback. ``apply(case)`` writes the case's
resources (Pods excepted: the real pods stand for them) and waits until the case's client pod
ACKed what the control plane built from them. Clients are real and run in the client pod as
the app uid: curl (HTTP/1.1 keep-alive with many URLs per process; one HTTP/2 prior-knowledge
request), and for many HTTP/2 requests ``h2_client.py`` (in order on one h2c connection: curl
7.88 fails the second request on an h2c connection, and a curl per request is what costs most).
Response flags are read from the client proxy's access log. Apps are reached for ``seen``,
``fail`` and ``active`` from inside their own pod, over loopback (not through the mesh).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "control_plane"))  # cp_mesh's home
from cp_mesh import MONITORING_URL, CpMesh, wait_for
from mesh_harness import APP_UID
from traffic_harness import Case, Seen, client_argv, split_curl_output, wait_until

from control_plane.resources import key_of
from control_plane.sources.files import read_manifests
from local_cluster import netns

APP = Path(__file__).parent / "traffic_harness.py"


class PodApp:
    """An app in its pod, with ``App``'s attributes (fail, seen, active) read and written over
    the app's control paths (traffic_harness.py ``serve``)."""

    def __init__(self, pod: netns.Pod, port: int, name: str) -> None:
        self.pod, self.port, self.name = pod, port, name
        self._fail: int | None = None
        self._refuse = 0

    def control(self, path: str) -> str:
        r = self.pod.exec(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{self.port}{path}"], timeout=10)
        if r.returncode != 0:
            raise AssertionError(f"app {self.name} in {self.pod.name}: {path}: curl exit {r.returncode}")
        return r.stdout

    @property
    def fail(self) -> int | None:
        return self._fail

    @fail.setter
    def fail(self, status: int | None) -> None:
        self.control(f"/_fail/{status or 0}")
        self._fail = status

    @property
    def refuse(self) -> int:
        return self._refuse  # as last set (the app counts it down as it refuses)

    @refuse.setter
    def refuse(self, n: int) -> None:
        self.control(f"/_refuse/{n}")
        self._refuse = n

    @property
    def seen(self) -> list[Seen]:
        return [Seen(self.name, s["method"], s["path"], s["headers"], s["body"].encode(), s["protocol"])
                for s in json.loads(self.control("/_seen"))]

    @seen.setter
    def seen(self, value: list) -> None:
        assert value == [], "only clearing is supported"
        self.control("/_clear")

    @property
    def active(self) -> int:
        return int(self.control("/_active"))

    def reset(self) -> None:
        self.control("/_reset")
        self._fail = None


class PodHarness:
    def __init__(self, node: netns.Node, bin_dir: Path, workloads: Iterable[Path]) -> None:
        self.mesh = CpMesh.start(node, bin_dir)
        try:
            self._start(workloads)
        except BaseException:
            self.mesh.close()
            raise

    def _start(self, workloads: Iterable[Path]) -> None:
        self.mesh.proxy_env["REMORA_ACCESS_LOG"] = "json"
        self.mesh.proxy_env["REMORA_DNS_REFRESH_RATE"] = "0.2"  # ServiceEntry DNS names follow fast
        # glibc's resolver options (resolv.conf(5)): a name the hosts file lacks fails within 1 s,
        # not the 10 s that the host's nameserver, unreachable from a pod, would take.
        self.mesh.proxy_env["RES_OPTIONS"] = "timeout:1 attempts:1"
        self.apps: dict[str, PodApp] = {}  # by the pod's address, as the loopback harness names them
        self.pods: dict[tuple[str, str], netns.Pod] = {}
        self.case_text = ""
        self.client: tuple[str, str] | None = None
        self.resolve: list[str] = []
        objs = [o for w in workloads for o in read_manifests(w)]
        services = [o for o in objs if o["kind"] == "Service"]
        self.mesh.apply("workloads", *services)
        self.workload_keys = {key_of(o) for o in services}
        hosts = {}
        for s in services:
            name, ns = s["metadata"]["name"], s["metadata"]["namespace"]
            for alias in (name, f"{name}.{ns}", f"{name}.{ns}.svc.cluster.local"):
                hosts[alias] = s["spec"]["clusterIP"]
        for p in (o for o in objs if o["kind"] == "Pod"):
            self._add_pod(p, services, hosts)
        self.mesh.wait_synced([f"{n}.{ns}" for ns, n in self.pods])

    def _add_pod(self, p: dict, services: list[dict], hosts: dict[str, str]) -> None:
        meta = p["metadata"]
        labels = meta.get("labels", {})
        ns, name, ip = meta["namespace"], meta["name"], p["status"]["podIP"]
        pod = self.mesh.add_pod(name, ns, (p.get("spec") or {}).get("serviceAccountName", "default"), labels,
                                hosts=hosts, address=ip)
        self.pods[(ns, name)] = pod
        # Port names say the protocol, as in Istio: tcp* ports get Istio's tcp-echo.
        ports = sorted({(int(sp.get("targetPort", sp["port"])), sp.get("name", "").startswith("tcp"))
                        for s in services if s["metadata"]["namespace"] == ns and s["spec"].get("selector")
                        and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
                        for sp in s["spec"]["ports"]})
        if not ports:
            return
        # The apps bind ports below 1024 (httpbin's 80) as the app uid, as a container may.
        pod.exec(["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"], check=True)
        for port, tcp in ports:
            self.mesh.apps.append(pod.spawn([sys.executable, str(APP), "serve-tcp" if tcp else "serve", str(port), ip],
                                            uid=APP_UID, gid=APP_UID))
            wait_for(lambda port=port: pod.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip(), 15,
                     f"the app in {name} to listen on {port}")
            if not tcp:
                self.apps.setdefault(ip, PodApp(pod, port, ip))

    # -- the interface of traffic_harness.Harness -------------------------------------------

    def app(self, address: str) -> PodApp:
        return self.apps[address]

    def reset(self) -> None:
        """Every app healthy and with nothing seen."""
        with ThreadPoolExecutor(len(self.apps)) as pool:  # one exec each: in parallel
            list(pool.map(PodApp.reset, self.apps.values()))

    def apply(self, case: Case) -> None:
        """Write the case's resources; return once its client proxy ACKed what was built from them."""
        objs = [o for o in case.objects() if o["kind"] != "Pod" and key_of(o) not in self.workload_keys]
        for o in objs:
            o.setdefault("metadata", {}).setdefault("namespace", case.pod[0])
        text = yaml.safe_dump_all(objs)
        self.client = case.pod
        # ServiceEntry hosts resolve to their addresses in the client (as the DNS proxy would).
        self.resolve = [f"{h}:{p['number']}:{se['spec']['addresses'][0]}" for se in objs
                        if se["kind"] == "ServiceEntry" and se["spec"].get("addresses")
                        for h in se["spec"]["hosts"] for p in se["spec"].get("ports", [])]
        if text == self.case_text:
            return
        pid = f"{case.pod[1]}.{case.pod[0]}"
        builds, old = self._builds(), self._status().get(pid, {}).get("acked_version")
        self.mesh.apply("case", *objs)
        self.case_text = text
        wait_for(lambda: self._builds() > builds, 10, "the control plane to rebuild", interval=0.05)
        # The build is offered to the proxy's stream right after it is counted: wait for the ACK
        # of a new version; a case that leaves this client's snapshot as it was has none.
        if not wait_until(lambda: self._synced(pid, old), 3, 0.05):
            wait_for(lambda: self._synced(pid, None), 10, f"{pid} to ACK the case", interval=0.05)

    def _synced(self, pid: str, other_than: str | None) -> bool:
        st = self._status().get(pid, {})
        return st.get("status") == "SYNCED" and st.get("acked_version") != other_than

    def _monitoring(self, path: str) -> str:
        r = netns.exec_in(self.mesh.node.netns, ["curl", "-sf", "--max-time", "3", MONITORING_URL + path])
        return r.stdout

    def _builds(self) -> int:
        m = re.search(r"^remora_control_builds_total (\d+)", self._monitoring("/metrics"), re.M)
        return int(m.group(1)) if m else 0

    def _status(self) -> dict[str, dict]:
        with contextlib.suppress(ValueError):
            view = json.loads(self._monitoring("/debug/proxies"))
            return {p["proxy_id"]: p for p in view["proxies"]}
        return {}

    @property
    def client_pod(self) -> netns.Pod:
        assert self.client is not None, "apply a case first"
        return self.pods[self.client]

    def curl(self, codec: str, service: str, number: int, path: str = "/", *args: str, n: int = 1,
             timeout: float = 20) -> list[tuple[int, str]]:
        """``n`` requests from the client pod to ``service:number``: [(status, body or headers+body)]."""
        resolve = [a for r in self.resolve for a in ("--resolve", r)]
        argv = client_argv(codec, f"http://{service}:{number}{path}", [*resolve, *args], n, timeout)
        r = self.client_pod.exec(argv, uid=APP_UID, gid=APP_UID, timeout=timeout * n + 30)
        return split_curl_output(r.stdout)

    def tcp(self, service: str, number: int, n: int = 1) -> list[str]:
        """``n`` connections from the client pod to ``service:number``, each sending one line:
        the answers."""
        script = ("import socket, sys\n"
                  "for _ in range(int(sys.argv[3])):\n"
                  "    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:\n"
                  "        s.sendall(b'hello\\n'); s.shutdown(socket.SHUT_WR)\n"
                  "        print(s.makefile().readline().strip(), flush=True)\n")
        r = self.client_pod.exec([sys.executable, "-c", script, service, str(number), str(n)],
                                 uid=APP_UID, gid=APP_UID, timeout=5 * n + 30)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    def metric(self, prefix: str) -> float:
        """The sum of the client proxy's samples whose line starts with ``prefix``."""
        text = self.mesh.proxies[self.client_pod.name].metrics()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def upstream_connects(self) -> int:
        """Connections the client proxy opened to endpoints (each an mTLS handshake)."""
        return int(self.metric('remora_tls_handshakes_total{side="client"}'))

    def access_log(self) -> list[dict]:
        """The client proxy's access log records so far (JSON lines of its output)."""
        h = self.mesh.proxies[self.client_pod.name]
        out = []
        for line in h.log_text().splitlines():
            if line.startswith("{") and '"response_flags"' in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def flags_of(self, fn: Callable[[], Any]) -> list[str]:
        """The response flags of the requests ``fn`` made, as the client proxy logged them."""
        start = self._log_settled()  # an earlier request's line may still be on its way
        fn()
        self._log_settled()
        return [r["response_flags"] for r in self.access_log()[start:]]

    def _log_settled(self) -> int:
        """Lines in the client proxy's access log once no new one came for 0.3 s (the log is
        flushed every 100 ms)."""
        count, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 0.3:
            now = len(self.access_log())
            if now != count:
                count, quiet_since = now, time.monotonic()
            time.sleep(0.05)
        return count

    def wait(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        return wait_until(cond, timeout, 0.05)

    def close(self) -> None:
        self.mesh.close()
