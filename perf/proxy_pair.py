#!/usr/bin/env python3
"""Requests/s and latency through a pair of remora sidecars, against a direct connection
and an HAProxy pair (mutual TLS, as in ../shared/bench-reference.md), in the same run.

    sudo .venv/bin/python perf/proxy_pair.py [--duration 5] [--repeats 3] [--rate 1000]

Two meshed pods (remora-init rules, a remora-proxy each, mTLS between them), two plain pods
(direct) and two pods with an HAProxy each (client side on 127.0.0.1:15001, server side on
:15006 with mTLS, backend connections reused), all on one node bridge; nginx (one process)
serves a 1,024-byte file with keep-alive in the three server pods. Pinning, as in ../shared/bench-reference.md: nginx and both proxies on core 0,
the load generator on core 1.

- max req/s: ``wrk -t1 -c16`` for ``--duration`` seconds, direct and through the pair,
  alternating, ``--repeats`` times (median and range reported).
- latency: a fixed-rate client (this file, ``--latency-client``) on one keep-alive
  connection; each request is timed by the client itself, from its scheduled send time (so a
  stall is not hidden by coordinated omission) and from its actual send time.
- proxy CPU per 1,000 requests (utime+stime of each proxy over the wrk runs), RSS idle and
  peak under load, and the server proxy's TLS handshake counter before/after (it must stay
  flat: the proxy-to-proxy connections are pooled).

Writes perf/results/proxy_pair.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

BODY_SIZE = 1024
APP_PORT = 8080
NGINX_CONF = """
daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen {port} reuseport; root {d}/www; }}
}}
"""
# -- the fixed-rate latency client (runs inside a pod) ----------------------------------
def latency_client(host: str, port: int, rate: float, duration: float) -> dict:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    n = int(rate * duration)
    scheduled, actual = [], []
    buf = b""
    start = time.perf_counter() + 0.05
    for i in range(n):
        t_sched = start + i / rate
        while (now := time.perf_counter()) < t_sched:
            if t_sched - now > 0.0005:
                time.sleep(t_sched - now - 0.0003)
        t_send = time.perf_counter()
        s.sendall(req)
        while True:  # read one response: head, then Content-Length bytes
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?i)content-length:\s*(\d+)", buf[:head_end])
                total = head_end + 4 + int(m.group(1))
                if len(buf) >= total:
                    buf = buf[total:]
                    break
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by the server")
            buf += chunk
        done = time.perf_counter()
        scheduled.append(done - t_sched)
        actual.append(done - t_send)
    return {"requests": n, "rate": rate, "from_scheduled_ms": _pcts(scheduled),
            "from_send_ms": _pcts(actual)}


def _pcts(samples: list[float]) -> dict:
    xs = sorted(samples)

    def pct(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 3)

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9), "max": pct(100)}


# -- the orchestration (root) ------------------------------------------------------------
def _start_nginx(pod, workdir: Path):
    workdir.mkdir(parents=True)
    (workdir / "www").mkdir()
    (workdir / "www" / "index.html").write_bytes(b"x" * BODY_SIZE)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=workdir, port=APP_PORT))
    return pod.spawn(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(workdir)],
                     stderr=subprocess.DEVNULL)


def _wrk(pod, url: str, duration: float, uid: int | None) -> dict:
    r = pod.exec(["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{duration:g}s", "--latency", url],
                 uid=uid, timeout=duration + 30)
    out = r.stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or not total:
        raise RuntimeError(f"wrk failed: {r.stderr or out}")
    return {"rps": float(m.group(1)), "requests": int(total.group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0}


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _server_handshakes(mesh) -> int:
    m = re.search(r'remora_tls_handshakes_total\{side="server"\} (\d+)', mesh.proxies["server"].metrics())
    return int(m.group(1)) if m else -1


def _latency(pod, host: str, rate: float, duration: float, uid: int | None,
             port: int = APP_PORT) -> dict:
    r = pod.exec(["taskset", "-c", "1", sys.executable, __file__, "--latency-client", host,
                  str(port), str(rate), str(duration)], uid=uid, timeout=duration + 30)
    if r.returncode != 0:
        raise RuntimeError(f"latency client failed: {r.stderr}")
    return json.loads(r.stdout)


def _start_haproxy_pair(node, ca, tmp: Path, procs: list) -> tuple:
    """Client and server pods with HAProxy (the reference configuration of perf/bench: mTLS
    between them, backend connections reused) and nginx behind the server side."""
    from perf.bench import certs, haproxy

    hclient, hserver = node.add_pod("hclient"), node.add_pod("hserver")
    procs.append(_start_nginx(hserver, tmp / "nginx-haproxy"))
    pems = certs.haproxy_pems(ca, tmp / "haproxy")
    pids = {}
    for name, pod, conf in (("client", hclient, haproxy.client_side_config(hserver.ip, pems)),
                            ("server", hserver, haproxy.server_side_config(hserver.ip, APP_PORT, pems))):
        path = tmp / "haproxy" / f"{name}.cfg"
        path.write_text(conf)
        proc = pod.spawn(["taskset", "-c", "0", "haproxy", "-db", "-f", str(path)])
        procs.append(proc)
        pids[name] = proc.pid
    return hclient, hserver, pids


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values)), "min": round(min(values)),
            "max": round(max(values)), "runs": [round(v) for v in values]}


def run(a: argparse.Namespace) -> dict:
    from mesh_harness import APP_UID, Mesh, Service

    from local_cluster import netns

    node = netns.Node.create(netns.new_prefix("perf"))
    mesh = None
    procs = []
    try:
        mesh = Mesh.start(node, REPO / ".venv" / "bin", [Service("web", APP_PORT)])
        dclient, dserver = node.add_pod("dclient"), node.add_pod("dserver")
        procs.append(_start_nginx(mesh.server, mesh.tmp / "nginx-mesh"))
        procs.append(_start_nginx(dserver, mesh.tmp / "nginx-direct"))
        hclient, hserver, hpids = _start_haproxy_pair(node, mesh.ca, mesh.tmp, procs)
        mesh.wait_port(mesh.server, APP_PORT)
        mesh.wait_port(dserver, APP_PORT)
        mesh.wait_port(hserver, APP_PORT)
        mesh.wait_port(hserver, 15006)
        mesh.wait_port(hclient, 15001)
        pids = {name: h.proc.pid for name, h in mesh.proxies.items()}
        for pid in pids.values():
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(pid)], check=True,
                           capture_output=True)
        time.sleep(0.5)
        rss_idle = {n: _rss_mb(p) for n, p in pids.items()}
        direct_url = f"http://{dserver.ip}:{APP_PORT}/index.html"
        mesh_url = f"http://web:{APP_PORT}/index.html"
        haproxy_url = "http://127.0.0.1:15001/index.html"
        _wrk(dclient, direct_url, 1, None)  # warm up every path
        _wrk(mesh.client, mesh_url, 1, APP_UID)
        _wrk(hclient, haproxy_url, 1, None)
        hcpu = {n: 0.0 for n in hpids}
        haproxy, haproxy_requests = [], 0
        hs_before = _server_handshakes(mesh)
        direct, pair = [], []
        cpu = {n: [0.0, 0.0] for n in pids}
        pair_requests = 0
        rss_peak = dict(rss_idle)
        for _ in range(a.repeats):
            direct.append(_wrk(dclient, direct_url, a.duration, None))
            hbefore = {n: sum(_cpu_seconds(p)) for n, p in hpids.items()}
            res = _wrk(hclient, haproxy_url, a.duration, None)
            haproxy.append(res)
            haproxy_requests += res["requests"]
            for n, p in hpids.items():
                hcpu[n] += sum(_cpu_seconds(p)) - hbefore[n]
            before = {n: _cpu_seconds(p) for n, p in pids.items()}
            stop = threading.Event()

            def sample(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    for n, p in pids.items():
                        rss_peak[n] = max(rss_peak[n], _rss_mb(p))
                    time.sleep(0.2)

            t = threading.Thread(target=sample)
            t.start()
            res = _wrk(mesh.client, mesh_url, a.duration, APP_UID)
            stop.set()
            t.join()
            pair.append(res)
            pair_requests += res["requests"]
            for n, p in pids.items():
                user, system = _cpu_seconds(p)
                cpu[n][0] += user - before[n][0]
                cpu[n][1] += system - before[n][1]
        hs_after = _server_handshakes(mesh)
        lat_direct = _latency(dclient, dserver.ip, a.rate, a.latency_duration, None)
        lat_pair = _latency(mesh.client, "web", a.rate, a.latency_duration, APP_UID)
        lat_haproxy = _latency(hclient, "127.0.0.1", a.rate, a.latency_duration, None, 15001)
        h_rps = _summary([r["rps"] for r in haproxy])
        d_rps = _summary([r["rps"] for r in direct])
        p_rps = _summary([r["rps"] for r in pair])
        return {
            "benchmark": "proxy_pair",
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "setup": {"body_bytes": BODY_SIZE, "server": "nginx 1 process, keep-alive",
                      "pinning": "nginx, both proxies and both HAProxies on core 0; "
                                 "wrk/latency client on core 1",
                      "wrk": f"-t1 -c16 -d{a.duration:g}s", "repeats": a.repeats,
                      "latency": f"one keep-alive connection, {a.rate:g} req/s for "
                                 f"{a.latency_duration:g}s, timed by the client"},
            "max_rps": {"direct": d_rps, "pair": p_rps, "haproxy_pair": h_rps,
                        "pair_over_direct": round(p_rps["median"] / d_rps["median"], 3),
                        "pair_over_haproxy": round(p_rps["median"] / h_rps["median"], 3)},
            "non_2xx": {"direct": sum(r["non_2xx"] for r in direct),
                        "pair": sum(r["non_2xx"] for r in pair),
                        "haproxy_pair": sum(r["non_2xx"] for r in haproxy)},
            "latency_ms": {"direct": lat_direct, "pair": lat_pair, "haproxy_pair": lat_haproxy,
                           "added_p50_ms": round(lat_pair["from_scheduled_ms"]["p50"]
                                                 - lat_direct["from_scheduled_ms"]["p50"], 3),
                           "added_p99_ms": round(lat_pair["from_scheduled_ms"]["p99"]
                                                 - lat_direct["from_scheduled_ms"]["p99"], 3)},
            "proxy_cpu_seconds_per_1000_requests": {
                n: {"user": round(cpu[n][0] / pair_requests * 1000, 4),
                    "system": round(cpu[n][1] / pair_requests * 1000, 4),
                    "total": round(sum(cpu[n]) / pair_requests * 1000, 4)} for n in pids},
            "haproxy_cpu_seconds_per_1000_requests": {
                n: round(hcpu[n] / haproxy_requests * 1000, 4) for n in hpids},
            "proxy_rss_mb": {"idle": rss_idle, "peak_under_load": rss_peak},
            "server_tls_handshakes": {"before_runs": hs_before, "after_runs": hs_after},
        }
    finally:
        for p in procs:
            netns.stop_process(p, timeout=3)
        if mesh is not None:
            mesh.close()
        node.destroy()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--latency-client":
        host, port, rate, duration = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(latency_client(host, port, rate, duration)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0,
                    help="latency client req/s (low enough that requests do not queue)")
    ap.add_argument("--latency-duration", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "perf" / "results" / "proxy_pair.json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("perf/proxy_pair.py: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    result = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
